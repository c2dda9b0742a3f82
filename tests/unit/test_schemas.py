"""Input validation for both models, bound by bound on both sides (docs/provider.md),
and the rules of a job request: model, callback_url, metadata. Each rejection must name
the field as the API reports it (``input.loras.0.scale``)."""

from __future__ import annotations

from typing import Any

import pytest

from service.domain.errors import ValidationFailed
from service.domain.schemas import (
    FLUX_DEV_LORA,
    FLUX_KREA_DEV_LORA,
    MAX_PROMPT_LENGTH,
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_VALUE_LENGTH,
    upstream_body,
    validate_input,
    validate_job_create,
)

DEV, KREA = FLUX_DEV_LORA, FLUX_KREA_DEV_LORA
BOTH = [DEV, KREA]
LORA = {"path": "owner/repo", "scale": 1.0}


def valid(model: str, **fields: Any) -> dict[str, Any]:
    return validate_input(model, {"prompt": "a red fox", **fields})


def rejected(model: str, **fields: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        validate_input(model, {"prompt": "a red fox", **fields})
    assert caught.value.status_code == 422
    for field in caught.value.fields:
        assert field["msg"], field  # every problem states its rule
    return [dict(f) for f in caught.value.fields]


def locs(fields: list[dict[str, str]]) -> list[str]:
    return [f["loc"] for f in fields]


# --------------------------------------------------------------------------- bounds, both models

# (field, lowest accepted, highest accepted, just below, just above)
COMMON_BOUNDS: list[tuple[str, Any, Any, Any, Any]] = [
    ("strength", 0.0, 1.0, -0.01, 1.01),
    ("guidance_scale", 0.0, 20.0, -0.1, 20.1),
    ("seed", -1, 2147483647, -2, 2147483648),
]
DEV_ONLY_BOUNDS: list[tuple[str, Any, Any, Any, Any]] = [
    ("num_inference_steps", 1, 50, 0, 51),
    ("num_images", 1, 4, 0, 5),
]
BOUND_CASES = [(m, *b) for m in BOTH for b in COMMON_BOUNDS] + [(DEV, *b) for b in DEV_ONLY_BOUNDS]
BOUND_IDS = [f"{c[0].rsplit('/', 1)[1]}-{c[1]}" for c in BOUND_CASES]


@pytest.mark.parametrize(("model", "field", "low", "high", "below", "above"), BOUND_CASES, ids=BOUND_IDS)
def test_numeric_bounds_accept_both_ends(model: str, field: str, low: Any, high: Any, below: Any, above: Any) -> None:
    assert valid(model, **{field: low})[field] == low
    assert valid(model, **{field: high})[field] == high


@pytest.mark.parametrize(("model", "field", "low", "high", "below", "above"), BOUND_CASES, ids=BOUND_IDS)
def test_numeric_bounds_reject_just_outside(
    model: str, field: str, low: Any, high: Any, below: Any, above: Any
) -> None:
    assert locs(rejected(model, **{field: below})) == [f"input.{field}"]
    assert locs(rejected(model, **{field: above})) == [f"input.{field}"]


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize("size", ["256*256", "1536*1536", "256*1536", "1536*256", "1024*768"])
def test_size_accepts_each_side_from_256_to_1536(model: str, size: str) -> None:
    assert valid(model, size=size)["size"] == size


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize(
    "size",
    ["255*256", "256*255", "1537*256", "256*1537", "0*0", "1024x1024", "1024*", "*1024", "1024", "",
     "1024 * 1024", "-256*256", "1024*1024\n", "0256*256"],
)
def test_size_rejects_out_of_range_and_malformed(model: str, size: str) -> None:
    fields = rejected(model, size=size)
    assert locs(fields) == ["input.size"]


@pytest.mark.parametrize(("model", "most"), [(DEV, 4), (KREA, 3)])
def test_lora_count_limit_per_model(model: str, most: int) -> None:
    assert len(valid(model, loras=[LORA] * most)["loras"]) == most
    assert locs(rejected(model, loras=[LORA] * (most + 1))) == ["input.loras"]


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize(("scale", "ok"), [(0.0, True), (4.0, True), (2, True), (-0.01, False), (4.01, False)])
def test_lora_scale_from_0_to_4(model: str, scale: float, ok: bool) -> None:
    loras = [LORA, {"path": "other/repo", "scale": scale}]
    if ok:
        assert valid(model, loras=loras)["loras"][1]["scale"] == scale
    else:
        assert locs(rejected(model, loras=loras)) == ["input.loras.1.scale"]


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize(
    ("lora", "loc"),
    [({"scale": 1.0}, "input.loras.0.path"), ({"path": "a/b"}, "input.loras.0.scale"),
     ({"path": "", "scale": 1.0}, "input.loras.0.path"), ({"path": "a/b", "scale": "1"}, "input.loras.0.scale"),
     ({"path": "a/b", "scale": 1.0, "weight": 2}, "input.loras.0.weight")],
    ids=["no-path", "no-scale", "empty-path", "string-scale", "unknown-key"],
)
def test_each_lora_needs_a_path_and_a_numeric_scale(model: str, lora: dict[str, Any], loc: str) -> None:
    assert locs(rejected(model, loras=[lora])) == [loc]


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_output_formats_jpeg_png_webp(model: str, fmt: str) -> None:
    assert valid(model, output_format=fmt)["output_format"] == fmt


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize("fmt", ["gif", "JPEG", "jpg", ""])
def test_other_output_formats_are_rejected(model: str, fmt: str) -> None:
    assert locs(rejected(model, output_format=fmt)) == ["input.output_format"]


URL_FIELDS = [(DEV, "image"), (KREA, "image"), (DEV, "mask_image")]


@pytest.mark.parametrize(("model", "field"), URL_FIELDS)
@pytest.mark.parametrize("url", ["https://cdn.example.com/a.png", "http://example.com/b.jpg?x=1"])
def test_url_fields_accept_http_and_https(model: str, field: str, url: str) -> None:
    extra = {"image": "https://example.com/ref.png"} if field == "mask_image" else {}
    assert valid(model, **extra, **{field: url})[field] == url


@pytest.mark.parametrize(("model", "field"), URL_FIELDS)
@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "example.com/a.png",
                                 "http://", "javascript:alert(1)", "", "https://" + "a" * 5000 + ".com"])
def test_url_fields_reject_anything_but_http_urls(model: str, field: str, url: str) -> None:
    extra = {"image": "https://example.com/ref.png"} if field == "mask_image" else {}
    assert locs(rejected(model, **extra, **{field: url})) == [f"input.{field}"]


def test_mask_image_needs_an_image_and_says_so_on_mask_image() -> None:
    [problem] = rejected(DEV, mask_image="https://example.com/mask.png")
    assert problem["loc"] == "input.mask_image"
    assert "image" in problem["msg"]
    both = valid(DEV, image="https://example.com/a.png", mask_image="https://example.com/m.png")
    assert both["mask_image"] == "https://example.com/m.png"


def test_a_bad_image_is_reported_once_not_as_a_missing_image_too() -> None:
    fields = rejected(DEV, image="ftp://x/a.png", mask_image="https://example.com/m.png")
    assert locs(fields) == ["input.image"]


@pytest.mark.parametrize("field", ["num_inference_steps", "num_images", "mask_image"])
def test_krea_rejects_the_fields_its_page_does_not_list(field: str) -> None:
    value = "https://example.com/m.png" if field == "mask_image" else 2
    [problem] = rejected(KREA, image="https://example.com/a.png", **{field: value})
    assert problem == {"loc": f"input.{field}", "msg": "unknown field for this model"}


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize("field", ["negative_prompt", "Prompt", "width", "loras_"])
def test_unknown_fields_are_rejected(model: str, field: str) -> None:
    assert rejected(model, **{field: "x"}) == [{"loc": f"input.{field}", "msg": "unknown field for this model"}]


@pytest.mark.parametrize("model", BOTH)
@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", "5"), ("seed", 1.0), ("seed", True), ("guidance_scale", "3.5"), ("size", 1024),
     ("enable_sync_mode", "true"), ("loras", {"path": "a"}), ("prompt", 5)],
)
def test_types_are_strict(model: str, field: str, value: Any) -> None:
    assert locs(rejected(model, **{field: value})) == [f"input.{field}"]


@pytest.mark.parametrize("model", BOTH)
def test_prompt_is_required_and_not_empty(model: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_input(model, {})
    assert locs([dict(f) for f in caught.value.fields]) == ["input.prompt"]
    assert locs(rejected(model, prompt="")) == ["input.prompt"]
    assert locs(rejected(model, prompt="x" * (MAX_PROMPT_LENGTH + 1))) == ["input.prompt"]
    assert valid(model, prompt="x" * MAX_PROMPT_LENGTH)["prompt"] == "x" * MAX_PROMPT_LENGTH


def test_every_problem_is_reported_at_once() -> None:
    fields = rejected(DEV, size="9*9", num_images=9, seed=-5, colour="red")
    assert sorted(locs(fields)) == ["input.colour", "input.num_images", "input.seed", "input.size"]


def test_input_must_be_an_object() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_input(DEV, ["prompt"])
    assert caught.value.fields == [{"loc": "input", "msg": "must be a JSON object"}]


# --------------------------------------------------------------------------- defaults


def test_defaults_are_filled_in_for_flux_dev_lora() -> None:
    assert validate_input(DEV, {"prompt": "p"}) == {
        "prompt": "p", "size": "1024*1024", "strength": 0.8, "guidance_scale": 3.5, "seed": -1,
        "output_format": "jpeg", "enable_base64_output": False, "enable_sync_mode": False,
        "loras": [], "num_inference_steps": 28, "num_images": 1,
    }


def test_defaults_are_filled_in_for_flux_krea_dev_lora() -> None:
    assert validate_input(KREA, {"prompt": "p"}) == {
        "prompt": "p", "size": "1024*1024", "strength": 0.8, "guidance_scale": 3.5, "seed": -1,
        "output_format": "jpeg", "enable_base64_output": False, "enable_sync_mode": False, "loras": [],
    }


def test_given_values_survive_and_explicit_nulls_are_dropped() -> None:
    out = validate_input(DEV, {"prompt": "p", "seed": 42, "image": None, "loras": [LORA]})
    assert out["seed"] == 42 and "image" not in out and out["loras"] == [LORA]


def test_upstream_body_always_asks_for_urls_and_an_async_task() -> None:
    stored = valid(DEV, enable_base64_output=True, enable_sync_mode=True, seed=3)
    body = upstream_body(stored)
    assert body["enable_base64_output"] is False and body["enable_sync_mode"] is False
    assert body["seed"] == 3 and body["guidance_scale"] == 3.5
    assert stored["enable_base64_output"] is True  # the stored input keeps what the client asked


# --------------------------------------------------------------------------- the job request


def job(**fields: Any) -> dict[str, Any]:
    return {"model": DEV, "input": {"prompt": "p"}, **fields}


def job_rejected(body: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        validate_job_create(body)
    return [dict(f) for f in caught.value.fields]


def test_a_valid_request_returns_the_input_with_defaults() -> None:
    request, input_ = validate_job_create(job(metadata={"user_id": "u_1"}, callback_url="https://b.example/h"))
    assert request.metadata == {"user_id": "u_1"}
    assert request.callback_url == "https://b.example/h"
    assert input_["num_images"] == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (job(model="wavespeed-ai/flux-schnell"), "model"),
        ({"input": {"prompt": "p"}}, "model"),
        ({"model": DEV}, "input"),
        (job(input="a fox"), "input"),
        (job(callback_url="ftp://backend.example/h"), "callback_url"),
        (job(callback_url="not a url"), "callback_url"),
        (job(webhook="https://x.example"), "webhook"),
        (job(input={"prompt": "p", "loras": [{"path": "a", "scale": 9}]}), "input.loras.0.scale"),
        (job(model=KREA, input={"prompt": "p", "num_images": 2}), "input.num_images"),
    ],
    ids=["unknown-model", "no-model", "no-input", "input-not-object", "ftp-callback", "callback-not-url",
         "unknown-top-level", "nested-input-loc", "krea-lacks-num-images"],
)
def test_request_errors_name_the_field(body: dict[str, Any], loc: str) -> None:
    assert loc in locs(job_rejected(body))


@pytest.mark.parametrize("body", [[], "x", None, 5])
def test_body_must_be_an_object(body: Any) -> None:
    assert job_rejected(body) == [{"loc": "body", "msg": "must be a JSON object"}]


def test_metadata_allows_16_string_keys() -> None:
    request, _ = validate_job_create(job(metadata={f"k{i}": "v" for i in range(16)}))
    assert len(request.metadata) == 16


def test_metadata_refuses_a_17th_key() -> None:
    assert locs(job_rejected(job(metadata={f"k{i}": "v" for i in range(17)}))) == ["metadata"]


@pytest.mark.parametrize(
    ("metadata", "loc"),
    [
        ({"n": 1}, "metadata.n"),
        ({"n": None}, "metadata.n"),
        ({"n": ["a"]}, "metadata.n"),
        ({"n": {"a": "b"}}, "metadata.n"),
        ({"n": True}, "metadata.n"),
        ({"": "v"}, "metadata"),
        ({"k" * (METADATA_MAX_KEY_LENGTH + 1): "v"}, "metadata"),
        ({"k": "v" * (METADATA_MAX_VALUE_LENGTH + 1)}, "metadata"),
        (["k", "v"], "metadata"),
        ("k=v", "metadata"),
    ],
    ids=["int", "null", "list", "object", "bool", "empty-key", "long-key", "long-value", "list-not-object",
         "string-not-object"],
)
def test_metadata_values_are_strings_and_keys_are_bounded(metadata: Any, loc: str) -> None:
    assert locs(job_rejected(job(metadata=metadata))) == [loc]


def test_metadata_at_its_length_limits_is_accepted() -> None:
    key, value = "k" * METADATA_MAX_KEY_LENGTH, "v" * METADATA_MAX_VALUE_LENGTH
    request, _ = validate_job_create(job(metadata={key: value, "empty": ""}))
    assert request.metadata == {key: value, "empty": ""}


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"input": {"prompt": "a\u0000b"}}, "input.prompt"),
        ({"input": {"prompt": "p", "loras": [{"path": "a\u0000", "scale": 1.0}]}}, "input.loras.0.path"),
        ({"metadata": {"user": "u\u00001"}}, "metadata.user"),
        ({"metadata": {"us\u0000er": "u1"}}, "metadata.us\u0000er"),
        ({"callback_url": "https://b.example/h\u0000"}, "callback_url"),
    ],
    ids=["prompt", "lora-path", "metadata-value", "metadata-key", "callback-url"],
)
def test_nul_characters_are_refused_where_they_are(fields: dict[str, Any], loc: str) -> None:
    # Postgres cannot store U+0000 in text or jsonb: it must be a 422, not a database error.
    assert job_rejected(job(**fields)) == [{"loc": loc, "msg": "must not contain the NUL character (\\u0000)"}]


@pytest.mark.parametrize("url", ["https://backend.example/hook\x0e", "https://backend.example/a b",
                                 "https://backend.example/\x7f", "https://backend.example/\t"])
def test_callback_urls_with_spaces_or_control_characters_are_refused_at_the_door(url: str) -> None:
    # They used to pass validation and then fail every delivery attempt in the notifier.
    with pytest.raises(ValidationFailed) as caught:
        validate_job_create({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "p"}, "callback_url": url})
    assert [f["loc"] for f in caught.value.fields] == ["callback_url"]
    assert "control characters" in caught.value.fields[0]["msg"]


def test_a_random_seed_is_replaced_by_the_one_picked_and_a_chosen_seed_is_kept() -> None:
    from service.domain.schemas import MAX_SEED, with_chosen_seed

    asked: list[int] = []

    def pick(bound: int) -> int:
        asked.append(bound)
        return 99

    assert with_chosen_seed({"prompt": "p", "seed": -1}, pick) == {"prompt": "p", "seed": 99}
    assert asked == [MAX_SEED + 1]  # the whole range the provider accepts
    assert with_chosen_seed({"prompt": "p", "seed": 5}, pick) == {"prompt": "p", "seed": 5}
    assert with_chosen_seed({"prompt": "p", "seed": 0}, pick) == {"prompt": "p", "seed": 0}
