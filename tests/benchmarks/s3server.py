"""moto's S3 under uvicorn, for benchmarks: ``python -m tests.benchmarks.s3server PORT``.

moto's own server (werkzeug) answers every request with ``Connection: close``, so each
S3 call would pay a new TCP connection: real S3, MinIO and R2 keep connections alive,
and a client's per-call cost is what a benchmark here wants to see. The same moto
backend, served by uvicorn's WSGI adapter, keeps them alive. Loopback only; it stops
by itself after LIFETIME seconds (default one hour).
"""

from __future__ import annotations

import os
import sys
import threading

import uvicorn
from moto.server import DomainDispatcherApplication, create_backend_app
from uvicorn.middleware.wsgi import WSGIMiddleware


def main(argv: list[str]) -> int:
    port = int(argv[0])
    lifetime = float(argv[1]) if len(argv) > 1 else 3600.0
    threading.Timer(lifetime, lambda: os._exit(0)).start()
    app = WSGIMiddleware(DomainDispatcherApplication(create_backend_app), workers=16)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
