"""The prediction object, webhook signing and the history query, without any I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from devtools.simulator.api import InvalidField, parse_history_query
from devtools.simulator.state import COMPLETED, FAILED, PROCESSING, SimTask, iso
from devtools.simulator.webhooks import WRONG_SECRET, encode, signed_headers
from service.domain.errors import SignatureInvalid
from service.domain.signing import verify_wavespeed

PREDICTION_FIELDS = {
    "id",
    "model",
    "input",
    "outputs",
    "urls",
    "has_nsfw_contents",
    "status",
    "created_at",
    "error",
    "timings",
}


def _task(**input_: Any) -> SimTask:
    return SimTask(
        id="t1",
        model="wavespeed-ai/flux-dev-lora",
        input={"prompt": "p", "size": "512*256", "output_format": "png", "num_images": 2, **input_},
        base_url="http://sim",
        webhook_url=None,
        created_at=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        seed=1,
    )


def test_prediction_has_exactly_the_spec_fields() -> None:
    prediction = _task().prediction()
    assert set(prediction) == PREDICTION_FIELDS
    assert prediction["urls"] == {"get": "http://sim/api/v3/predictions/t1/result"}
    assert prediction["created_at"] == "2025-01-02T03:04:05.678000Z"
    assert prediction["outputs"] == [] and prediction["has_nsfw_contents"] == []
    assert prediction["error"] == "" and prediction["timings"] == {"inference": 0}
    assert datetime.fromisoformat(prediction["created_at"]) == _task().created_at


def test_completed_prediction_lists_outputs_with_one_nsfw_flag_each() -> None:
    task = _task()
    task.outputs = [task.output_url(0), task.output_url(1)]
    task.status, task.inference_ms = COMPLETED, 812
    prediction = task.prediction()
    assert prediction["outputs"] == ["http://sim/outputs/t1/0.png", "http://sim/outputs/t1/1.png"]
    assert prediction["has_nsfw_contents"] == [False, False]
    assert prediction["timings"] == {"inference": 812}
    stale = task.prediction(status=PROCESSING)
    assert stale["status"] == PROCESSING and stale["outputs"] == []


def test_failed_prediction_carries_its_error() -> None:
    task = _task()
    task.status, task.error = FAILED, "boom"
    assert task.prediction()["error"] == "boom"


def test_image_spec_follows_the_input() -> None:
    spec = _task().image_spec(1)
    assert (spec.width, spec.height, spec.fmt, spec.index, spec.seed) == (512, 256, "png", 1, 1)


def test_iso_is_utc_with_z() -> None:
    assert iso(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01-01T00:00:00.000000Z"


def test_signed_headers_verify_and_wrong_key_does_not() -> None:
    body = encode({"id": "t1", "status": "completed"})
    assert json.loads(body) == {"id": "t1", "status": "completed"}
    headers = signed_headers("whsec_abc", "evt_1", body, now=1_700_000_000)
    assert headers["webhook-timestamp"] == "1700000000"
    assert verify_wavespeed("whsec_abc", headers, body, now=1_700_000_000) == "evt_1"
    bad = signed_headers(WRONG_SECRET, "evt_1", body, now=1_700_000_000)
    with pytest.raises(SignatureInvalid):
        verify_wavespeed("whsec_abc", bad, body, now=1_700_000_000)


def test_signed_headers_match_the_spec_test_vector() -> None:
    body = b'{"id":"task_01","status":"completed"}'
    headers = signed_headers("whsec_test_secret_0123456789", "evt_01", body, now=1758798328)
    expected = "v3,0d55016b88f55391fdd5e1d7a850309f3e799ae7e19f6511928f78058a63a8bc"
    assert headers["webhook-signature"] == expected


def testparse_history_query_defaults() -> None:
    query = parse_history_query({})
    assert query["page"] == 1 and query["page_size"] == 20
    assert query["model"] is None and query["status"] is None


def testparse_history_query_naive_time_is_utc() -> None:
    query = parse_history_query({"created_after": "2025-01-01T00:00:00"})
    assert query["created_after"] == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"page": 0}, "page"),
        ({"page": "1"}, "page"),
        ({"status": "created"}, "status"),
        ({"model": "other/model"}, "model"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"colour": "red"}, "colour"),
    ],
)
def testparse_history_query_names_the_bad_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField, match=f"^{field}: "):
        parse_history_query(body)
