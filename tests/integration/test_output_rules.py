"""What the storer keeps: only JPEG/PNG/WebP bytes (a `data:` URL's declared type is
not believed), never more outputs than the job asked for, and presigned GETs that pin
the content type."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg

from tests.conftest import BUCKET, Service
from tests.integration.helpers import events_of, wait_terminal
from tests.integration.staging import image_bytes, stage_storing


def data_url(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64," + base64.b64encode(data).decode()


def stored_keys(s3: Any, job_id: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"outputs/{job_id}/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_a_data_url_of_html_is_never_stored(service: Service, database_url: str, s3: Any) -> None:
    key = service.new_key()
    html = b"<html><script>alert(document.cookie)</script></html>"
    job_id = stage_storing(database_url, service.keys[key], [data_url("text/html", html)])
    with service.client(key) as client:
        job = wait_terminal(client, job_id)
    assert job["status"] == "failed" and "not a JPEG, PNG or WebP image" in job["error"]
    assert job["outputs"] == [] and job["cost_usd"] is None
    assert stored_keys(s3, job_id) == []


def test_a_data_url_is_stored_as_what_its_bytes_are_not_what_it_declares(
    service: Service, database_url: str, s3: Any
) -> None:
    key = service.new_key()
    job_id = stage_storing(database_url, service.keys[key], [data_url("text/html", image_bytes("PNG"))])
    with service.client(key) as client:
        job = wait_terminal(client, job_id)
    assert job["status"] == "completed", job
    assert job["outputs"][0]["content_type"] == "image/png"
    assert job["outputs"][0]["key"].endswith("/0.png")
    head = s3.head_object(Bucket=BUCKET, Key=job["outputs"][0]["key"])
    assert head["ContentType"] == "image/png"


def test_more_outputs_than_asked_are_neither_stored_nor_paid_for_nor_counted_as_spent(
    service: Service, database_url: str, s3: Any
) -> None:
    key = service.new_key()
    jpeg = data_url("image/jpeg", image_bytes("JPEG"))
    job_id = stage_storing(database_url, service.keys[key], [jpeg] * 5, num_images=2)
    with service.client(key) as client:
        job = wait_terminal(client, job_id)
        ignored = events_of(client, job_id, "output.ignored")
    assert job["status"] == "completed", job
    assert [o["index"] for o in job["outputs"]] == [0, 1]
    assert job["cost_usd"] == "0.03"  # two images at 0.015, not five
    assert [k.rsplit("/", 1)[1] for k in stored_keys(s3, job_id) if ".thumb." not in k] == ["0.jpeg", "1.jpeg"]
    assert ignored and ignored[0]["detail"]["count"] == 3
    with psycopg.connect(database_url) as conn:  # the ledger's spend: two images, not five
        spend = conn.execute("SELECT amount_usd, images FROM ledger WHERE job_id = %s AND kind = 'spend'",
                             (job_id,)).fetchone()
    assert spend == (Decimal("0.03"), 2)


def test_presigned_output_urls_pin_the_content_type(service: Service, database_url: str) -> None:
    key = service.new_key()
    job_id = stage_storing(database_url, service.keys[key], [data_url("image/webp", image_bytes("WEBP"))])
    with service.client(key) as client:
        job = wait_terminal(client, job_id)
        redirect = client.get(f"/v1/jobs/{job_id}/outputs/0", follow_redirects=False)
    url = job["outputs"][0]["url"]
    assert parse_qs(urlsplit(url).query)["response-content-type"] == ["image/webp"]
    assert parse_qs(urlsplit(redirect.headers["location"]).query)["response-content-type"] == ["image/webp"]
    assert httpx.get(url, timeout=10).headers["content-type"] == "image/webp"
