"""POST /v1/jobs over real HTTP and Postgres: every bad request is a 4xx that names the
field and inserts nothing; Idempotency-Key returns the first job; and the health probes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from service.api.job_api import MAX_BODY_BYTES
from tests.conftest import Service, run_service

DEV, KREA = "wavespeed-ai/flux-dev-lora", "wavespeed-ai/flux-krea-dev-lora"


def owner_of(service: Service, client: httpx.Client) -> str:
    return service.keys[client.headers["authorization"].split(" ", 1)[1]]


def job_rows(sql: psycopg.Connection[Any], owner: str) -> int:
    row = sql.execute("SELECT count(*) FROM jobs WHERE owner = %s", (owner,)).fetchone()
    assert row is not None
    return int(row[0])


def body(**fields: Any) -> dict[str, Any]:
    return {"model": DEV, "input": {"prompt": "a red fox", "size": "256*256"}, **fields}


def with_input(**input_: Any) -> dict[str, Any]:
    return body(input={"prompt": "a red fox", "size": "256*256", **input_})


# --------------------------------------------------------------------------- validation

INVALID: list[tuple[str, Any, str]] = [
    ("size-too-big", with_input(size="2048*2048"), "input.size"),
    ("size-malformed", with_input(size="1024x1024"), "input.size"),
    ("lora-scale", with_input(loras=[{"path": "a/b", "scale": 1}, {"path": "c/d", "scale": 4.5}]),
     "input.loras.1.scale"),
    ("too-many-loras-krea", body(model=KREA, input={"prompt": "p", "loras": [{"path": "a", "scale": 1}] * 4}),
     "input.loras"),
    ("krea-num-images", body(model=KREA, input={"prompt": "p", "num_images": 2}), "input.num_images"),
    ("num-images", with_input(num_images=5), "input.num_images"),
    ("steps", with_input(num_inference_steps=0), "input.num_inference_steps"),
    ("seed", with_input(seed=2**31), "input.seed"),
    ("format", with_input(output_format="gif"), "input.output_format"),
    ("image-url", with_input(image="ftp://example.com/a.png"), "input.image"),
    ("mask-without-image", with_input(mask_image="https://example.com/m.png"), "input.mask_image"),
    ("unknown-input-field", with_input(negative_prompt="blurry"), "input.negative_prompt"),
    ("no-prompt", body(input={"size": "256*256"}), "input.prompt"),
    ("input-not-object", body(input="a red fox"), "input"),
    ("no-input", {"model": DEV}, "input"),
    ("unknown-model", body(model="wavespeed-ai/flux-schnell"), "model"),
    ("no-model", {"input": {"prompt": "p"}}, "model"),
    ("metadata-17-keys", body(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ("metadata-number", body(metadata={"user_id": 7}), "metadata.user_id"),
    ("metadata-not-object", body(metadata=["a"]), "metadata"),
    ("callback-ftp", body(callback_url="ftp://backend.example/hook"), "callback_url"),
    ("callback-not-url", body(callback_url="backend"), "callback_url"),
    ("unknown-top-level", body(webhook="https://backend.example/hook"), "webhook"),
    ("body-is-a-list", [body()], "body"),
    ("body-is-a-string", "a red fox", "body"),
    ("nul-in-prompt", with_input(prompt="a red\u0000fox"), "input.prompt"),
    ("nul-in-metadata", body(metadata={"user_id": "u\u00001"}), "metadata.user_id"),
]


@pytest.mark.parametrize(("case", "payload", "loc"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_job_is_422_naming_the_field_and_inserts_nothing(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any], case: str, payload: Any, loc: str
) -> None:
    response = client.post("/v1/jobs", json=payload)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert loc in [f["loc"] for f in error["fields"]], error
    assert all(f["msg"] for f in error["fields"])
    assert job_rows(sql, owner_of(service, client)) == 0


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b'{"model": ', b"\xff\xfe\xfa", b"NaN NaN"],
    ids=["broken", "empty", "truncated", "not-utf8", "two-values"],
)
def test_a_body_that_is_not_json_is_400_and_inserts_nothing(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any], raw: bytes
) -> None:
    response = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "bad_request"
    assert error["fields"][0]["loc"] == "body"
    assert job_rows(sql, owner_of(service, client)) == 0


def _huge() -> bytes:
    padding = "x" * (MAX_BODY_BYTES + 1)
    return json.dumps({"model": DEV, "input": {"prompt": padding}}).encode()


def test_a_huge_body_is_413_and_inserts_nothing(service: Service, client: httpx.Client,
                                                 sql: psycopg.Connection[Any]) -> None:
    response = client.post("/v1/jobs", content=_huge(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "payload_too_large"
    assert job_rows(sql, owner_of(service, client)) == 0


def test_a_huge_chunked_body_without_length_is_413_too(service: Service, client: httpx.Client,
                                                        sql: psycopg.Connection[Any]) -> None:
    data = _huge()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 16 * 1024):
            yield data[start : start + 16 * 1024]

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert job_rows(sql, owner_of(service, client)) == 0


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
def test_a_bad_wait_is_422_naming_wait(service: Service, client: httpx.Client, sql: psycopg.Connection[Any],
                                       wait: str) -> None:
    response = client.post("/v1/jobs", params={"wait": wait}, json=body())
    assert response.status_code == 422, response.text
    assert [f["loc"] for f in response.json()["error"]["fields"]] == ["wait"]
    assert job_rows(sql, owner_of(service, client)) == 0


def test_a_valid_job_is_202_with_defaults_and_metadata_stored(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    response = client.post("/v1/jobs", json=body(metadata={"user_id": "u_1"}))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["input"]["guidance_scale"] == 3.5 and job["input"]["num_images"] == 1
    # A random seed is chosen at admission and stored (schemas.with_chosen_seed).
    assert 0 <= job["input"]["seed"] <= 2147483647
    assert job["metadata"] == {"user_id": "u_1"}
    row = sql.execute("SELECT owner, input, metadata FROM jobs WHERE id = %s", (job["id"],)).fetchone()
    assert row == (owner_of(service, client), job["input"], {"user_id": "u_1"})


# --------------------------------------------------------------------------- Idempotency-Key


def idem_rows(sql: psycopg.Connection[Any], owner: str, key: str) -> list[str]:
    rows = sql.execute("SELECT id FROM jobs WHERE owner = %s AND idempotency_key = %s", (owner, key)).fetchall()
    return [r[0] for r in rows]


def test_same_key_and_body_returns_the_first_job_with_200(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    headers = {"Idempotency-Key": "order-1"}
    first = client.post("/v1/jobs", json=body(metadata={"a": "1", "b": "2"}), headers=headers)
    assert first.status_code == 202, first.text
    # The same JSON with its keys in another order is the same request.
    again = client.post("/v1/jobs", json={"metadata": {"b": "2", "a": "1"}, **body()}, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert idem_rows(sql, owner_of(service, client), "order-1") == [first.json()["id"]]
    assert job_rows(sql, owner_of(service, client)) == 1


def test_same_key_with_another_body_is_409(service: Service, client: httpx.Client,
                                           sql: psycopg.Connection[Any]) -> None:
    headers = {"Idempotency-Key": "order-2"}
    first = client.post("/v1/jobs", json=body(), headers=headers)
    assert first.status_code == 202
    other = client.post("/v1/jobs", json=with_input(seed=5), headers=headers)
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["type"] == "conflict"
    assert [f["loc"] for f in error["fields"]] == ["Idempotency-Key"]
    assert idem_rows(sql, owner_of(service, client), "order-2") == [first.json()["id"]]


def test_different_owners_use_the_same_key_independently(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    with service.client() as other:
        mine = client.post("/v1/jobs", json=body(), headers=headers)
        theirs = other.post("/v1/jobs", json=with_input(seed=9), headers=headers)
        assert mine.status_code == 202 and theirs.status_code == 202, (mine.text, theirs.text)
        assert mine.json()["id"] != theirs.json()["id"]
        assert other.get(f"/v1/jobs/{mine.json()['id']}").status_code == 404
        assert idem_rows(sql, owner_of(service, other), "shared-key") == [theirs.json()["id"]]
    assert idem_rows(sql, owner_of(service, client), "shared-key") == [mine.json()["id"]]


def test_concurrent_requests_with_one_key_make_one_job(
    service: Service, client: httpx.Client, sql: psycopg.Connection[Any]
) -> None:
    key = client.headers["authorization"].split(" ", 1)[1]

    def post(_: int) -> httpx.Response:
        with service.client(key) as c:
            return c.post("/v1/jobs", json=body(), headers={"Idempotency-Key": "burst"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(idem_rows(sql, owner_of(service, client), "burst")) == 1


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_an_idempotency_key_of_bad_length_is_422(service: Service, client: httpx.Client,
                                                 sql: psycopg.Connection[Any], key: str) -> None:
    response = client.post("/v1/jobs", json=body(), headers={"Idempotency-Key": key})
    assert response.status_code == 422, response.text
    assert [f["loc"] for f in response.json()["error"]["fields"]] == ["Idempotency-Key"]
    assert job_rows(sql, owner_of(service, client)) == 0


# --------------------------------------------------------------------------- health


def test_healthz_is_200(service: Service) -> None:
    response = httpx.get(service.url + "/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_is_200_with_each_check_when_database_and_s3_are_up(service: Service) -> None:
    response = httpx.get(service.url + "/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "s3": "ok"}}


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port with nothing listening (held bound, not listening, so nobody takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_readyz_is_503_naming_s3_when_s3_is_unreachable(database_url: str, simulator: Any) -> None:
    with closed_port() as port, run_service(
        database_url, f"http://127.0.0.1:{port}", simulator.url, run_workers=False
    ) as broken:
        response = httpx.get(broken.url + "/readyz", timeout=30)
        assert httpx.get(broken.url + "/healthz").status_code == 200  # alive, just not ready
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["s3"].startswith("unavailable")


def test_a_seed_the_caller_chose_is_kept_and_random_seeds_differ_per_job(client: httpx.Client) -> None:
    kept = client.post("/v1/jobs", json=body(input={"prompt": "a red fox", "size": "256*256", "seed": 7}))
    assert kept.status_code == 202 and kept.json()["input"]["seed"] == 7
    seeds = {client.post("/v1/jobs", json=body()).json()["input"]["seed"] for _ in range(3)}
    assert len(seeds) == 3
