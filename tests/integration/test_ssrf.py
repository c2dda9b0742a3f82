"""The SSRF guard: with ALLOW_PRIVATE_NETWORKS off (the production default), URLs the
service would fetch or post to on a user's behalf must point at the public internet.

Checked at job creation (422 naming the field) and again when a callback is sent,
since a name's DNS answer can change between the two. No test here sends anything
beyond loopback: public addresses are only ever validated, never contacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.devstack import DevStack
from devtools.serverthread import ServerThread
from devtools.test_chain import TestChain
from tests.conftest import Service, fresh_database, run_service
from tests.integration.helpers import eventually, submit
from tests.servers import WebhookCatcher

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.0.0.1:8000/hook",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # AWS/GCP/Azure instance metadata
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[fe80::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",  # multicast
    "http://100.100.100.200/hook",  # carrier-grade NAT range (Alibaba Cloud metadata)
    "http://localhost/hook",  # a name: refused for what it resolves to
    "http://metadata.google.internal/computeMetadata/v1/",
    "file:///etc/passwd",
    "ftp://192.0.2.1/hook",
    "gopher://127.0.0.1:6379/_INFO",
]
# Documentation-range and well-known public literals: validated, never contacted
# (the service under test runs no workers).
ALLOWED = ["http://93.184.215.14/hook", "https://8.8.8.8:8443/hooks?token=abc", "http://[2606:4700::1111]/hook"]


@pytest.fixture(scope="module")
def guarded(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    """API only, guard on, on a database of its own: no worker of any process ever sees
    the jobs it accepts, so nothing is sent to the public addresses they name."""
    with fresh_database(postgres_server) as db, run_service(
        db, s3_endpoint, simulator.url, run_workers=False, allow_private_networks=False
    ) as svc:
        yield svc


@pytest.fixture
def api_service(guarded: Service) -> Service:
    """``api`` talks to the guarded service."""
    return guarded


def create(api: httpx.Client, **body: Any) -> httpx.Response:
    input_ = {"prompt": "x", "size": "256*256", **body.pop("input", {})}
    return api.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora", "input": input_, **body})


@pytest.mark.parametrize("url", REFUSED)
def test_private_callback_url_is_422_naming_callback_url(api: httpx.Client, url: str) -> None:
    response = create(api, callback_url=url)
    assert response.status_code == 422, response.text
    fields = response.json()["error"]["fields"]
    assert [f["loc"] for f in fields] == ["callback_url"]
    assert fields[0]["msg"]


@pytest.mark.parametrize("url", REFUSED)
def test_private_input_image_url_is_422_naming_the_input_field(api: httpx.Client, url: str) -> None:
    response = create(api, input={"image": url})
    assert response.status_code == 422, response.text
    assert [f["loc"] for f in response.json()["error"]["fields"]] == ["input.image"]


def test_every_refused_url_is_named_in_one_answer(api: httpx.Client) -> None:
    response = create(api, callback_url="http://10.0.0.1/", input={"image": "http://127.0.0.1/a.png",
                                                                   "mask_image": "http://[::1]/m.png"})
    assert response.status_code == 422
    locs = {f["loc"] for f in response.json()["error"]["fields"]}
    assert locs == {"callback_url", "input.image", "input.mask_image"}


@pytest.mark.parametrize("url", ALLOWED)
def test_public_addresses_are_accepted(api: httpx.Client, url: str) -> None:
    response = create(api, callback_url=url, input={"image": url})
    assert response.status_code == 202, response.text
    assert response.json()["callback_url"] == url


def test_allow_private_networks_lets_loopback_through(client: httpx.Client) -> None:
    # The session service runs with ALLOW_PRIVATE_NETWORKS=true, as tests and `dev` do.
    job = submit(client, callback_url="http://127.0.0.1:9/hook")
    assert job["callback_url"] == "http://127.0.0.1:9/hook"


def test_dev_turns_allow_private_networks_on_and_signs_with_its_test_chain() -> None:
    stack = DevStack("postgresql://x", "http://127.0.0.1:1", "http://127.0.0.1:2", "key",
                     TestChain(Path("chain.pem"), Path("key.pem"), Path("root.pem")))
    environment = stack.environment(8000)
    assert environment["ALLOW_PRIVATE_NETWORKS"] == "true"
    assert (environment["C2PA_SIGNING_CERT"], environment["C2PA_SIGNING_KEY"]) == ("chain.pem", "key.pem")


def test_callback_url_is_checked_again_when_sent(
    postgres_server: str, s3_endpoint: str, simulator: ServerThread
) -> None:
    """A delivery to loopback queued while private networks were allowed is refused by a
    worker that does not allow them: nothing reaches the endpoint, and each refused
    attempt is in the job's events."""
    with WebhookCatcher() as catcher, fresh_database(postgres_server) as db:
        with run_service(db, s3_endpoint, simulator.url, run_workers=False,
                         allow_private_networks=True) as lax, lax.client() as c:
            key = c.headers["Authorization"].removeprefix("Bearer ")
            job = submit(c, callback_url=catcher.url("/cb"))
            assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        with run_service(db, s3_endpoint, simulator.url, allow_private_networks=False,
                         callback_retry_schedule="0,0.1") as strict, strict.client(key) as c:
            final = eventually(lambda: (j := c.get(f"/v1/jobs/{job['id']}").json())["callback"]["status"]
                               == "failed" and j, timeout=15)
            attempts = [e["detail"] for e in c.get(f"/v1/jobs/{job['id']}/events").json()["data"]
                        if e["type"] == "callback.attempt"]
    assert final["callback"] == {"status": "failed", "attempts": 2}
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt["status_code"] is None
        assert "refused at send time" in attempt["error"] and "loopback" in attempt["error"]
    assert catcher.snapshot() == []
