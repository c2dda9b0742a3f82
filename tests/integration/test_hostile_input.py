"""No input gets a 500: deep JSON, NUL in paths, ports out of range, floods of bad query
values; and the receiver refuses oversized signature headers and id-less signed bodies
before they can cost CPU or change a job."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from tests.conftest import Service, fresh_database, make_settings, run_service
from tests.integration.test_history_page import set_cookie_headers, sign_in
from tests.integration.test_webhooks import encode, owner_of, sign, submitted_job
from tests.processes import ServiceProcess

DEV = "wavespeed-ai/flux-dev-lora"


def test_json_nested_a_thousand_deep_is_a_400(client: httpx.Client) -> None:
    for body in (b"[" * 1000 + b"]" * 1000, b'{"model":' * 1000 + b"1" + b"}" * 1000):
        answer = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
    facade = client.post(f"/api/v3/{DEV}", content=b"[" * 1000 + b"]" * 1000)
    assert 400 <= facade.status_code < 500


def test_a_callback_port_out_of_range_is_a_422_naming_the_field(client: httpx.Client) -> None:
    for url in ("http://example.com:99999/hook", "http://example.com:0/hook"):
        answer = client.post("/v1/jobs", json={"model": DEV, "input": {"prompt": "x"}, "callback_url": url})
        assert answer.status_code == 422, answer.text
        assert [f["loc"] for f in answer.json()["error"]["fields"]] == ["callback_url"]
    image = client.post("/v1/jobs", json={"model": DEV, "input": {"prompt": "x", "image": "http://a.b:70000/i.png"}})
    assert image.status_code == 422 and image.json()["error"]["fields"][0]["loc"] == "input.image"


@pytest.mark.parametrize("path", ["/v1/jobs/%00", "/v1/jobs/a%00b/events", "/v1/jobs/%00/cancel",
                                  "/v1/jobs/%00/callback/redeliver", "/v1/jobs/%00/outputs/0",
                                  "/api/v3/predictions/%00/result", "/v1/jobs/" + "x" * 5000])
def test_nul_or_absurd_job_ids_in_the_path_are_a_404(client: httpx.Client, path: str) -> None:
    method = "POST" if path.endswith(("cancel", "redeliver")) else "GET"
    answer = client.request(method, path)
    assert answer.status_code == 404, answer.text


def test_nul_in_the_history_page_path_is_not_a_500(service: Service) -> None:
    with sign_in(service, service.new_key()) as web:
        answer = web.get("/jobs/%00")
    assert answer.status_code == 404, answer.text[:300]


def test_cookies_are_secure_whenever_the_public_address_is_https(
    postgres_server: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    # Plain http to uvicorn and no X-Forwarded-Proto: a TLS-terminating proxy whose
    # address FORWARDED_ALLOW_IPS does not list. PUBLIC_BASE_URL alone decides.
    with fresh_database(postgres_server) as db, run_service(
        db, s3_endpoint, simulator.url, run_workers=False, public_base_url="https://jobs.example.com"
    ) as svc, httpx.Client(base_url=svc.url, timeout=10) as web:
        form = web.get("/login")
    [cookie] = set_cookie_headers(form, "wsj_csrf")
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_a_flood_of_bad_status_values_answers_a_short_list(client: httpx.Client) -> None:
    flood = [("status", f"bogus{i % 7},x{i}") for i in range(2500)]  # about 50 KB of query, 5,000 bad values
    answer = client.get("/v1/jobs", params=[*flood, ("limit", "x")])
    assert answer.status_code == 422
    fields = answer.json()["error"]["fields"]
    assert len(fields) <= 20 and len(fields) == len({(f["loc"], f["msg"]) for f in fields})
    assert {f["loc"] for f in fields} == {"status", "limit"}
    assert len(answer.content) < 10_000


# --------------------------------------------------------------------------- receiver


def test_a_signed_body_without_an_id_changes_nothing(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    job_id = submitted_job(sql, owner_of(service, client))
    with sql.cursor(row_factory=dict_row) as cur:
        before = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    forged = {"status": "completed", "outputs": ["https://attacker.example/x.png"], "has_nsfw_contents": [False]}
    for prediction in (forged, {**forged, "id": 42}, {**forged, "id": ""}):
        body = encode(prediction)
        answer = httpx.post(f"{service.url}/webhooks/wavespeed/{job_id}", content=body,
                            headers=sign(body, "evt_" + uuid.uuid4().hex))
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["fields"][0]["loc"] == "id"
    with sql.cursor(row_factory=dict_row) as cur:
        after = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        outputs = cur.execute("SELECT count(*) AS n FROM job_outputs WHERE job_id = %s", (job_id,)).fetchone()
    assert after == before and outputs == {"n": 0}


def test_a_signed_event_for_a_nul_job_id_is_a_400(service: Service) -> None:
    body = encode({"id": "task_x", "status": "completed", "outputs": []})
    answer = httpx.post(f"{service.url}/webhooks/wavespeed/%00", content=body, headers=sign(body, "evt_nul"))
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("entries", [6, 40])
def test_too_many_signature_entries_are_refused_even_with_a_valid_one(service: Service, entries: int) -> None:
    body = encode({"id": "task_x", "status": "processing"})
    headers = sign(body, "evt_" + uuid.uuid4().hex)
    headers["webhook-signature"] = " ".join(["v3,00"] * (entries - 1) + [headers["webhook-signature"]])
    answer = httpx.post(f"{service.url}/webhooks/wavespeed/job_unknown", content=body, headers=headers)
    assert answer.status_code == 401 and "entries" in answer.json()["error"]["message"]


def _raw_post(port: int, header_value: bytes) -> tuple[bytes, float]:
    """POST with a header of ``header_value`` over a raw socket (the client does no parsing
    work to speak of); the status line and the seconds until it came."""
    body = b'{"id":"task_x","status":"completed"}'
    head = (b"POST /webhooks/wavespeed/job_x HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"webhook-id: evt_1\r\nwebhook-timestamp: " + str(int(time.time())).encode() + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nwebhook-signature: ")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # The server may answer and close before reading it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + header_value + b"\r\n\r\n" + body)
        answer = sock.recv(200)
    return answer.split(b"\r\n", 1)[0], time.monotonic() - started


def test_a_20_mb_signature_header_is_refused_before_any_route_runs(service: Service) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    status, _ = _raw_post(port, b" ".join([b"v3," + b"0" * 64] * 300_000))  # about 20 MB
    assert status.startswith(b"HTTP/1.1 431"), status


@pytest.mark.slow
@pytest.mark.parametrize(("parser", "expected"), [("httptools", b"431"), ("h11", b"400")])
def test_serve_caps_the_header_block(
    postgres_server: str, s3_endpoint: str, simulator: ServerThread, tmp_path: Path, parser: str, expected: bytes
) -> None:
    """`serve`: a 20 MB header is refused by the server as it arrives — by the capped
    httptools protocol (431), the default, or by h11's own limit (uvicorn answers its
    "buffer too long" with a 400) under --http h11. The figure printed is the server
    process's CPU for that request."""
    import psutil

    port = free_port()
    with fresh_database(postgres_server) as db:
        settings = make_settings(db, s3_endpoint, simulator.url, port)
        argv = ["serve", "--port", str(port), "--host", "127.0.0.1", "--no-workers", "--http", parser]
        proc = ServiceProcess(argv, settings, tmp_path / "serve.log", port=port).start()
        try:
            server = psutil.Process(proc.proc.pid if proc.proc else 0)
            cpu_before = sum(server.cpu_times()[:2])
            status, seconds = _raw_post(port, b" ".join([b"v3," + b"0" * 64] * 300_000))
            cpu = sum(server.cpu_times()[:2]) - cpu_before
        finally:
            proc.stop()
    assert status.startswith(b"HTTP/1.1 " + expected), status
    print(f"\n{parser}: 20 MB webhook-signature header: {status.decode()} after {seconds * 1000:.0f} ms wall, "
          f"{cpu * 1000:.0f} ms server CPU")
