"""An ASGI app under uvicorn in a background thread: used by `dev` to run the simulator
beside the service, and by the tests for every real server they start."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp


class ServerThread:
    """Serve ``app`` with uvicorn on ``host`` in a background thread.

    ``start()`` returns once uvicorn has bound its socket and run the app's lifespan
    startup; ``stop()`` asks it to exit (lifespan shutdown runs) and joins the thread.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        **uvicorn_options: Any,
    ) -> None:
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "on",
            # Requests still hanging at teardown (a hung submit, a slow download) are
            # cancelled after this, so a test session never waits on them for long.
            "timeout_graceful_shutdown": 2,
        }
        options.update(uvicorn_options)
        self.host = host
        self.startup_timeout = startup_timeout
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn-{id(self):x}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (see the captured log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {self.startup_timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        port: int = sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
