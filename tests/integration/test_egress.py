"""The egress layer under attack, with ALLOW_PRIVATE_NETWORKS off: a name is resolved
once and the connection made to the address that was checked (DNS rebinding gets
nowhere), and output downloads follow redirects by hand, each hop checked.

Tests cannot reach the public internet, so two parts are replaced, both at the socket
layer and nowhere else: the resolver (``FakeDNS``: names answer what each test says) and
the network (``LoopbackInternet``: the documentation-free "public" addresses below are
served by real servers on 127.0.0.1; every connection is recorded, and anything else is
refused, so nothing leaves the machine). Everything between — the policy, the pinning,
httpx, the storer and the deliverer — is the real code.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from devtools.devstack import free_port
from devtools.serverthread import ServerThread
from service.app import create_app
from service.clients.egress import Egress
from service.domain.errors import EgressRefused
from tests.conftest import BUCKET, Service, fresh_database, make_settings
from tests.integration.helpers import events_of, eventually, submit, wait_terminal
from tests.integration.staging import image_bytes, stage_storing
from tests.servers import WebhookCatcher

PUBLIC = "93.184.215.14"  # global addresses: checked as such, but only ever served on loopback
OTHER_PUBLIC = "93.184.215.15"
ROUTED = {PUBLIC, OTHER_PUBLIC}


class FakeDNS:
    """Each name answers its list of answers in turn; the last one sticks."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def set(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        queue = self.answers.get(host, [[]])
        return queue.pop(0) if len(queue) > 1 else queue[0]


class LoopbackInternet(httpcore.AsyncNetworkBackend):
    """Connections to ROUTED addresses go to the same port on 127.0.0.1; every
    connection is recorded; any other address is refused."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host not in ROUTED:
            raise httpcore.ConnectError(f"{host} is off limits in tests")
        return await self.inner.connect_tcp("127.0.0.1", port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class Cdn:
    """A CDN on loopback: an image, a lie, and redirects (to metadata, to a private name,
    off the allowed hosts, and chains of a given length)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[str] = []

    def url(self, path: str, host: str = "cdn.example") -> str:
        return f"http://{host}:{self.port}{path}"

    def app(self) -> Starlette:
        jpeg = image_bytes("JPEG")

        async def serve(request: Request) -> Response:
            path = request.url.path
            self.hits.append(path)
            if path == "/img.jpg":
                return Response(jpeg, media_type="image/jpeg")
            if path == "/html":
                return Response(b"<html><script>alert(1)</script></html>", media_type="image/jpeg")
            if path == "/to-metadata":
                return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)
            if path == "/to-internal":
                return RedirectResponse(self.url("/img.jpg", "internal.example"), status_code=302)
            if path == "/to-other":
                return RedirectResponse(self.url("/img.jpg", "elsewhere.test"), status_code=302)
            if path.startswith("/hop/"):
                left = int(path.rsplit("/", 1)[1])
                return RedirectResponse("/img.jpg" if left <= 1 else f"/hop/{left - 1}", status_code=302)
            return Response(status_code=404)

        return Starlette(routes=[Route("/{path:path}", serve)])


@pytest.fixture(scope="module")
def dns() -> FakeDNS:
    return FakeDNS()


@pytest.fixture(scope="module")
def net() -> LoopbackInternet:
    return LoopbackInternet()


@pytest.fixture(scope="module")
def cdn(dns: FakeDNS) -> Iterator[Cdn]:
    cdn = Cdn()
    dns.set("cdn.example", [PUBLIC])
    dns.set("elsewhere.test", [OTHER_PUBLIC])
    dns.set("internal.example", ["10.0.0.7"])
    with ServerThread(cdn.app(), port=cdn.port):
        yield cdn


@pytest.fixture(scope="module")
def strict(postgres_server: str, s3_endpoint: str, simulator: ServerThread, dns: FakeDNS,
           net: LoopbackInternet, cdn: Cdn) -> Iterator[tuple[Service, str]]:
    """The service with private networks refused, the replaced resolver and network, and
    downloads limited to *.example hosts (and, to show that the address rule holds even
    for a listed host, the metadata address itself)."""
    with fresh_database(postgres_server) as db:
        port = free_port()
        settings = make_settings(db, s3_endpoint, simulator.url, port, allow_private_networks=False,
                                 output_hosts_allowed="example,169.254.169.254", callback_retry_schedule="0")
        app = create_app(settings, resolver=dns, network=net)
        with ServerThread(app, port=port, timeout_graceful_shutdown=3) as server:
            yield Service(url=server.url, settings=settings, server=server), db


def download(strict: tuple[Service, str], source: str) -> dict[str, Any]:
    svc, db = strict
    key = svc.new_key()
    job_id = stage_storing(db, svc.keys[key], [source])
    with svc.client(key) as client:
        return wait_terminal(client, job_id)


def stored(s3: Any, job_id: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"outputs/{job_id}/").get("Contents", [])]


# --------------------------------------------------------------------------- rebinding


async def test_a_rebinding_name_is_connected_only_at_the_address_that_was_checked() -> None:
    dns, net = FakeDNS(), LoopbackInternet()
    with WebhookCatcher() as catcher:
        port = urlsplit(catcher.url()).port or 0
        dns.set("rebind.example", [PUBLIC], ["127.0.0.1"])  # public to the check, loopback next
        egress = Egress(allow_private=False, resolver=dns, network=net)
        try:
            answer = await egress.http.post(f"http://rebind.example:{port}/hook", content=b"{}")
        finally:
            await egress.aclose()
        [request] = catcher.snapshot()
        # One lookup, one connection, to the checked address; the URL's host still named.
        assert answer.status_code == 200
        assert dns.lookups == ["rebind.example"]
        assert net.connects == [(PUBLIC, port)]
        assert request.headers["host"] == f"rebind.example:{port}"
        # The next connection sees the loopback answer and is refused before any socket.
        again = Egress(allow_private=False, resolver=dns, network=net)
        try:
            with pytest.raises(EgressRefused, match="loopback"):
                await again.http.post(f"http://rebind.example:{port}/hook", content=b"{}")
        finally:
            await again.aclose()
        assert net.connects == [(PUBLIC, port)] and len(catcher.snapshot()) == 1


def test_a_callback_name_that_rebinds_to_loopback_gets_no_connection(
    strict: tuple[Service, str], dns: FakeDNS, net: LoopbackInternet
) -> None:
    svc, _ = strict
    with WebhookCatcher() as catcher, svc.client() as client:
        port = urlsplit(catcher.url()).port or 0
        dns.set("hook.example", [PUBLIC], ["127.0.0.1"])  # the creation check sees the public one
        job = submit(client, callback_url=f"http://hook.example:{port}/cb")
        client.post(f"/v1/jobs/{job['id']}/cancel")
        attempt = eventually(lambda: events_of(client, job["id"], "callback.attempt"), timeout=20)[0]["detail"]
    assert attempt["status_code"] is None
    assert "refused at send time" in attempt["error"] and "loopback" in attempt["error"]
    assert catcher.snapshot() == []
    assert ("127.0.0.1", port) not in net.connects


def test_a_callback_is_sent_to_the_checked_address_with_its_own_host_name(
    strict: tuple[Service, str], dns: FakeDNS
) -> None:
    svc, _ = strict
    with WebhookCatcher() as catcher, svc.client() as client:
        port = urlsplit(catcher.url()).port or 0
        dns.set("backend.example", [PUBLIC])
        job = submit(client, callback_url=f"http://backend.example:{port}/cb")
        client.post(f"/v1/jobs/{job['id']}/cancel")
        [request] = catcher.wait_for(1, timeout=20)
    assert request.headers["host"] == f"backend.example:{port}"
    assert request.json()["data"]["id"] == job["id"]


# --------------------------------------------------------------------------- downloads


def test_a_download_is_stored_from_an_allowed_public_host(strict: tuple[Service, str], cdn: Cdn, s3: Any) -> None:
    job = download(strict, cdn.url("/img.jpg"))
    assert job["status"] == "completed", job
    assert job["outputs"][0]["content_type"] == "image/jpeg"


def test_a_redirect_to_the_metadata_address_is_refused_and_never_connected(
    strict: tuple[Service, str], cdn: Cdn, net: LoopbackInternet, s3: Any
) -> None:
    job = download(strict, cdn.url("/to-metadata"))
    assert job["status"] == "failed"
    assert "redirect 1 refused" in job["error"] and "link-local" in job["error"]
    assert not any(host.startswith("169.254.") for host, _ in net.connects)
    assert stored(s3, job["id"]) == []


def test_a_redirect_to_a_name_with_a_private_address_is_refused(
    strict: tuple[Service, str], cdn: Cdn, net: LoopbackInternet, s3: Any
) -> None:
    job = download(strict, cdn.url("/to-internal"))
    assert job["status"] == "failed" and "private" in job["error"]
    assert not any(host == "10.0.0.7" for host, _ in net.connects)
    assert stored(s3, job["id"]) == []


def test_three_redirects_are_followed_and_a_fourth_is_not(strict: tuple[Service, str], cdn: Cdn) -> None:
    assert download(strict, cdn.url("/hop/3"))["status"] == "completed"
    job = download(strict, cdn.url("/hop/4"))
    assert job["status"] == "failed" and "more than 3 redirects" in job["error"]


def test_a_redirect_off_the_allowed_hosts_is_refused(strict: tuple[Service, str], cdn: Cdn,
                                                      net: LoopbackInternet) -> None:
    job = download(strict, cdn.url("/to-other"))
    assert job["status"] == "failed" and "OUTPUT_HOSTS_ALLOWED" in job["error"]
    assert not any(host == OTHER_PUBLIC for host, _ in net.connects)


def test_bytes_that_are_not_an_image_are_never_stored_whatever_the_header_says(
    strict: tuple[Service, str], cdn: Cdn, s3: Any
) -> None:
    job = download(strict, cdn.url("/html"))
    assert job["status"] == "failed" and "not a JPEG, PNG or WebP image" in job["error"]
    assert stored(s3, job["id"]) == []


def test_input_image_urls_are_checked_by_the_same_layer(strict: tuple[Service, str], dns: FakeDNS) -> None:
    svc, _ = strict
    dns.set("img.example", ["10.1.1.1"])
    with svc.client() as client:
        answer = client.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora",
                                               "input": {"prompt": "x", "image": "http://img.example/a.png"}})
    assert answer.status_code == 422
    assert answer.json()["error"]["fields"] == [{"loc": "input.image", "msg": "must not point at a private or "
                                                                          "reserved address"}]


def test_ports_outside_the_range_are_a_422_not_a_500(strict: tuple[Service, str]) -> None:
    svc, _ = strict
    with svc.client() as client:
        answer = client.post("/v1/jobs", json={"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "x"},
                                               "callback_url": "http://hook.example:99999/cb"})
    assert answer.status_code == 422, answer.text
    assert [f["loc"] for f in answer.json()["error"]["fields"]] == ["callback_url"]


def test_httpx_does_not_route_egress_through_an_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would resolve the name itself and undo the pinning.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    egress = Egress(allow_private=False)
    assert egress.http._mounts == {} and not egress.http._trust_env


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` only (not for any address), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_is_checked_against_the_urls_host_name_not_the_pinned_address(tmp_path: Path) -> None:
    """The socket goes to the checked address, yet the TLS server name and the
    certificate check are the URL's host: a certificate for tls.example verifies."""
    cert, key = _self_signed(tmp_path, "tls.example")
    seen: list[str] = []

    async def hello(request: Request) -> Response:
        seen.append(request.headers["host"])
        return Response(b"ok")

    dns, net = FakeDNS(), LoopbackInternet()
    dns.set("tls.example", [PUBLIC])
    port = free_port()
    app = Starlette(routes=[Route("/", hello)])
    with ServerThread(app, port=port, ssl_certfile=str(cert), ssl_keyfile=str(key)):
        trust = ssl.create_default_context(cafile=str(cert))
        egress = Egress(allow_private=False, resolver=dns, network=net, ssl_context=trust)
        try:
            answer = await egress.http.get(f"https://tls.example:{port}/")
            # The same certificate does not verify for a name it was not issued to.
            dns.set("other-name.example", [PUBLIC])
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                await egress.http.get(f"https://other-name.example:{port}/")
        finally:
            await egress.aclose()
    assert answer.status_code == 200 and answer.content == b"ok"
    assert seen == [f"tls.example:{port}"]
    assert net.connects[0] == (PUBLIC, port)
