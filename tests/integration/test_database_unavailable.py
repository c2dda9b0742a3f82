"""A database that takes no clients (a restart, ``too many clients already``) makes the
API answer 503 with Retry-After — in /v1's shape and in the WaveSpeed facade's — never a
500, and the service answers normally once the database is back. (Found by schemathesis
when the suite ran in four processes and Postgres ran out of connection slots.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from devtools.serverthread import ServerThread
from tests.conftest import Service, fresh_database, run_service

JOB = {"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a lighthouse at dusk"}}


@pytest.fixture
def own_service(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[tuple[Service, str]]:
    with fresh_database(postgres_server) as url, run_service(url, s3_endpoint, simulator.url,
                                                             run_workers=False) as svc:
        yield svc, url


def _refuse_clients(admin: psycopg.Connection[Any], name: str, refuse: bool) -> None:
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
    if refuse:  # and end the sessions the service's pool holds
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_requests_while_the_database_refuses_clients_are_503_with_retry_after_and_change_nothing(
    own_service: tuple[Service, str], postgres_server: str
) -> None:
    svc, url = own_service
    key = svc.new_key()
    headers = {"Authorization": f"Bearer {key}"}
    name = url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(postgres_server, autocommit=True) as admin, httpx.Client(base_url=svc.url,
                                                                                   timeout=30) as http:
        assert http.post("/v1/jobs", json=JOB, headers=headers).status_code == 202  # the pool is warm
        _refuse_clients(admin, name, True)
        try:
            answers = [http.post("/v1/jobs", json=JOB, headers=headers) for _ in range(2)]
            facade = http.post("/api/v3/wavespeed-ai/flux-dev-lora", json=JOB["input"], headers=headers)
            listing = http.get("/v1/jobs", headers=headers)
        finally:
            _refuse_clients(admin, name, False)
        for answer in [*answers, listing]:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["type"] == "unavailable"
        assert facade.status_code == 503, facade.text
        assert facade.headers["retry-after"] == "1"
        assert facade.json()["code"] == 503 and "database" in facade.json()["message"]
        # Back to normal, and nothing was recorded while it was away: one job, the first.
        after = http.get("/v1/jobs", headers=headers)
        assert after.status_code == 200, after.text
        assert len(after.json()["data"]) == 1
