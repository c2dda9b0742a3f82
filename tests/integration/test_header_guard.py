"""The header cap of `serve`'s protocol (service/api/plumbing/header_guard.py) counts the header
block only: a large body that arrives in the same reads as its headers is answered by
the app, however the bytes are split; and what follows the headers that is not body
(chunk extensions, trailers) is bounded by the same cap. Raw sockets against the real
service under uvicorn with the protocol `serve` runs."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.api.plumbing.header_guard import capped_httptools, head_end
from service.app import create_app
from service.db.keys import create_key_blocking
from tests.conftest import make_settings
from tests.integration.test_webhooks import sign

DEV = "wavespeed-ai/flux-dev-lora"
PAD = 200 * 1024  # a body of 200 KB: three times the 64 KiB header cap


@pytest.fixture(scope="module")
def served(database_url: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[tuple[int, str]]:
    """(port, an API key) of the service under `serve`'s capped httptools protocol."""
    port = free_port()
    settings = make_settings(database_url, s3_endpoint, simulator.url, port)
    app = create_app(settings, run_workers=False)
    with ServerThread(app, port=port, http=capped_httptools(settings.max_request_header_bytes)):
        yield port, create_key_blocking(database_url, f"owner_{uuid.uuid4().hex[:8]}")


def exchange(port: int, writes: list[bytes], pause: float = 0.05) -> bytes:
    """Send ``writes`` one by one over a fresh connection, then read the whole answer (the
    request says ``connection: close``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i, chunk in enumerate(writes):
                if i:
                    time.sleep(pause)  # each write its own read on the server's side
                sock.sendall(chunk)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def job_request(key: str) -> bytes:
    """POST /v1/jobs with a valid body padded with 200 KB of JSON whitespace."""
    body = json.dumps({"model": DEV, "input": {"prompt": "a lighthouse", "size": "256*256"}}).encode()
    body = body[:-1] + b" " * PAD + b"}"
    return (b"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + key.encode() + b"\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def webhook_request() -> bytes:
    """A signed webhook of 200 KB for a job that does not exist (answered 2xx)."""
    body = json.dumps({"id": "task_" + uuid.uuid4().hex, "status": "processing"}).encode()
    body = body[:-1] + b" " * PAD + b"}"
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in sign(body, "evt_" + uuid.uuid4().hex).items())
    return (b"POST /webhooks/wavespeed/job_00000000000000000000000000 HTTP/1.1\r\nhost: 127.0.0.1\r\n" + head
            + b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def splits(request: bytes) -> dict[str, list[bytes]]:
    """The same request cut at places around the end of its headers."""
    end = request.index(b"\r\n\r\n")
    return {
        "one write": [request],
        "inside the headers": [request[:40], request[40:]],
        "inside the empty line": [request[: end + 3], request[end + 3 :]],
        "at the empty line": [request[: end + 4], request[end + 4 :]],
        "a byte into the body": [request[: end + 5], request[end + 5 :]],
        "100 KB into the body": [request[: end + 100_000], request[end + 100_000 :]],
        "three writes": [request[:10], request[10 : end + 70_000], request[end + 70_000 :]],
    }


@pytest.mark.parametrize("cut", list(splits(b"a\r\n\r\nb")))
def test_a_200_kb_job_sent_with_its_headers_is_answered_by_the_app(served: tuple[int, str], cut: str) -> None:
    port, key = served
    answer = exchange(port, splits(job_request(key))[cut])
    assert status(answer) == 202, answer[:300]


@pytest.mark.parametrize("cut", list(splits(b"a\r\n\r\nb")))
def test_a_200_kb_webhook_sent_with_its_headers_is_answered_by_the_app(served: tuple[int, str], cut: str) -> None:
    port, _ = served
    answer = exchange(port, splits(webhook_request())[cut])
    assert status(answer) == 200, answer[:300]


def test_headers_over_the_cap_are_still_refused_however_they_are_split(served: tuple[int, str]) -> None:
    port, key = served
    request = job_request(key)
    end = request.index(b"\r\n\r\n")
    big = request[:end] + b"\r\nx-filler: " + b"a" * 70_000 + request[end:]
    for writes in ([big], [big[:30_000], big[30_000:]], [b"\r\n\r\n" * 10 + big]):  # empty lines first too
        assert status(exchange(port, writes)) == 431


def chunked_webhook(trailers: bytes, chunk: int = 4096, extension: bytes = b"") -> bytes:
    body = json.dumps({"id": "task_" + uuid.uuid4().hex, "status": "processing"}).encode()
    body = body[:-1] + b" " * PAD + b"}"
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in sign(body, "evt_" + uuid.uuid4().hex).items())
    chunks = b"".join(b"%x" % len(body[i : i + chunk]) + extension + b"\r\n" + body[i : i + chunk] + b"\r\n"
                      for i in range(0, len(body), chunk))
    return (b"POST /webhooks/wavespeed/job_00000000000000000000000000 HTTP/1.1\r\nhost: 127.0.0.1\r\n" + head
            + b"connection: close\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n" + trailers + b"\r\n")


def test_a_chunked_body_in_small_chunks_with_a_short_trailer_is_answered(served: tuple[int, str]) -> None:
    port, _ = served
    answer = exchange(port, [chunked_webhook(b"x-checksum: abc\r\n", chunk=100)])  # 2,000 chunks
    assert status(answer) == 200, answer[:300]


@pytest.mark.parametrize(("trailers", "extension"), [
    (b"".join(b"x-trailer-%d: %s\r\n" % (i, b"a" * 1000) for i in range(200)), b""),  # 200 KB of trailers
    (b"x-one: " + b"a" * 300_000 + b"\r\n", b""),  # one 300 KB trailer
    (b"", b";ext=" + b"e" * 2000),  # 2 KB of extension on each of 50 chunks
])
def test_trailers_and_chunk_extensions_are_bounded_by_the_header_cap(
    served: tuple[int, str], trailers: bytes, extension: bytes
) -> None:
    port, _ = served
    request = chunked_webhook(trailers, extension=extension)
    answer = exchange(port, [request[i : i + 65536] for i in range(0, len(request), 65536)], pause=0.01)
    assert status(answer) == 431, answer[:300]
    assert status(exchange(port, [webhook_request()])) == 200  # the server goes on answering


@pytest.mark.parametrize(("data", "end"), [
    (b"GET / HTTP/1.1\r\nhost: x\r\n\r\nbody", 27), (b"GET / HTTP/1.1\nhost: x\n\nbody", 24),
    (b"GET / HTTP/1.1\r\nhost: x\r\n", -1), (b"\n\r\nrest", 3),
])
def test_the_end_of_a_header_block_is_its_first_empty_line(data: bytes, end: int) -> None:
    assert head_end(data) == end
