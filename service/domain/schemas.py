"""Request shapes and per-model input validation.

The pydantic models here are the single source of truth for what a job's ``input`` may
hold (the tables of docs/provider.md): the job API and the WaveSpeed facade validate
with them, and /openapi.json is generated from them. The simulator keeps its own copy
of the tables, written from the same page (devtools/simulator/params.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from service.domain.errors import FieldError, ValidationFailed

FLUX_DEV_LORA = "wavespeed-ai/flux-dev-lora"
FLUX_KREA_DEV_LORA = "wavespeed-ai/flux-krea-dev-lora"
MODELS = (FLUX_DEV_LORA, FLUX_KREA_DEV_LORA)

MAX_URL_LENGTH = 4096
MAX_PROMPT_LENGTH = 10_000
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500
# \Z, not $: "$" also matches before a trailing newline. No leading zeros: "0256" is not
# a width the provider documents.
_SIZE_RE = re.compile(r"^([1-9]\d{0,4})\*([1-9]\d{0,4})\Z")
SIZE_MIN, SIZE_MAX = 256, 1536
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
START_TIMEOUT_MAX_SECONDS = 86_400


def _http_url(value: str) -> str:
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if "\x00" in value:
        raise ValueError(NUL_RULE)  # the same words as for every other field
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        # Spaces and control characters are not valid in a URL, and HTTP clients refuse
        # them later, far from the request that brought them in.
        raise ValueError("must not contain spaces or control characters (percent-encode them)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    try:
        httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError("is not a valid URL") from None
    return value


def _size(value: str) -> str:
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError("must be 'W*H', e.g. '1024*1024'")
    for side in match.groups():
        if not SIZE_MIN <= int(side) <= SIZE_MAX:
            raise ValueError(f"width and height must each be between {SIZE_MIN} and {SIZE_MAX}")
    return value


# What the validators above enforce, said in JSON Schema for /openapi.json (pydantic
# cannot read a validator function). One side of a size, SIZE_MIN to SIZE_MAX written
# without leading zeros; tests/unit/test_openapi_rules.py checks it number by number.
SIZE_SIDE = r"(?:25[6-9]|2[6-9][0-9]|[3-9][0-9]{2}|1[0-4][0-9]{2}|15[0-2][0-9]|153[0-6])"
URL_JSON_SCHEMA: dict[str, Any] = {
    "type": "string", "format": "uri", "pattern": r"^https?://[^/?#@\s]+([/?#].*)?$", "maxLength": MAX_URL_LENGTH,
    "description": "An http(s) URL with a host.",
}
SIZE_JSON_SCHEMA: dict[str, Any] = {
    "type": "string", "pattern": rf"^{SIZE_SIDE}\*{SIZE_SIDE}$",
    "description": f"`W*H`; width and height each from {SIZE_MIN} to {SIZE_MAX}.",
}

HttpUrlStr = Annotated[str, AfterValidator(_http_url), WithJsonSchema(URL_JSON_SCHEMA)]
SizeStr = Annotated[str, AfterValidator(_size), WithJsonSchema(SIZE_JSON_SCHEMA)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_LENGTH)]


RANDOM_SEED = -1  # the provider picks a seed (we pick it at admission: with_chosen_seed)
MAX_SEED = 2147483647

class _Strict(BaseModel):
    # strict: "5" is not a number and 1.0 is not an integer; forbid: a typo in a field
    # name is an error rather than a silently ignored (and billed) default.
    model_config = ConfigDict(extra="forbid", strict=True)


class Lora(_Strict):
    path: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]
    scale: Annotated[float, Field(ge=0.0, le=4.0)]


class _CommonInput(_Strict):
    prompt: Prompt
    image: HttpUrlStr | None = None
    size: SizeStr = "1024*1024"
    strength: Annotated[float, Field(ge=0.0, le=1.0)] = 0.8
    guidance_scale: Annotated[float, Field(ge=0.0, le=20.0)] = 3.5
    seed: Annotated[int, Field(ge=RANDOM_SEED, le=MAX_SEED)] = RANDOM_SEED
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    enable_base64_output: bool = False
    enable_sync_mode: bool = False


class FluxDevLoraInput(_CommonInput):
    """Input of ``wavespeed-ai/flux-dev-lora``."""

    # _mask_needs_image, in JSON Schema.
    model_config = ConfigDict(json_schema_extra={"dependentRequired": {"mask_image": ["image"]}})

    mask_image: Annotated[HttpUrlStr | None, Field(description="An http(s) URL; only together with `image`.")] = None
    loras: Annotated[list[Lora], Field(max_length=4)] = []
    num_inference_steps: Annotated[int, Field(ge=1, le=50)] = 28
    num_images: Annotated[int, Field(ge=1, le=4)] = 1

    @field_validator("mask_image")
    @classmethod
    def _mask_needs_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not a model one) so the error names input.mask_image. ``image``
        # is declared first, so info.data has it unless it was itself invalid (already reported).
        if value is not None and "image" in info.data and info.data["image"] is None:
            raise ValueError("mask_image is only allowed together with image")
        return value


class FluxKreaDevLoraInput(_CommonInput):
    """Input of ``wavespeed-ai/flux-krea-dev-lora``."""

    loras: Annotated[list[Lora], Field(max_length=3)] = []


INPUT_MODELS: dict[str, type[_CommonInput]] = {
    FLUX_DEV_LORA: FluxDevLoraInput,
    FLUX_KREA_DEV_LORA: FluxKreaDevLoraInput,
}


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"at most {METADATA_MAX_KEYS} keys")
    for key, item in value.items():
        if not 1 <= len(key) <= METADATA_MAX_KEY_LENGTH:
            raise ValueError(f"keys must be 1 to {METADATA_MAX_KEY_LENGTH} characters")
        if len(item) > METADATA_MAX_VALUE_LENGTH:
            raise ValueError(f"values must be at most {METADATA_MAX_VALUE_LENGTH} characters")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_metadata), WithJsonSchema({
    "type": "object", "maxProperties": METADATA_MAX_KEYS,
    "propertyNames": {"minLength": 1, "maxLength": METADATA_MAX_KEY_LENGTH},
    "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE_LENGTH},
    "description": "String keys and values, filterable with `metadata.<key>=<value>`.",
})]


class JobCreate(_Strict):
    """Body of ``POST /v1/jobs``; ``input`` is checked against the model's own table."""

    model: Literal["wavespeed-ai/flux-dev-lora", "wavespeed-ai/flux-krea-dev-lora"]
    input: dict[str, Any]
    callback_url: Annotated[HttpUrlStr | None, Field(
        description="Where the signed terminal event is POSTed (Standard Webhooks).")] = None
    metadata: Metadata = {}
    # Scheduling (contract: "Scheduling"): lower is sent upstream first when jobs wait for
    # provider capacity; a job not sent within start_timeout_seconds ends timed_out.
    priority: Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = PRIORITY_DEFAULT
    start_timeout_seconds: Annotated[int, Field(ge=1, le=START_TIMEOUT_MAX_SECONDS)] | None = None


def _loc(parts: tuple[int | str, ...], prefix: str) -> str:
    text = ".".join(str(p) for p in parts)
    if prefix:
        return f"{prefix}.{text}" if text else prefix
    return text or "body"


def _rule(err: Any) -> str:
    msg = str(err["msg"])
    # pydantic's "Value error, ..." prefix is noise for API users.
    return msg.removeprefix("Value error, ")


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic errors as the API's ``fields`` list, one entry per problem."""
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            out.append(FieldError(_loc(loc, prefix), "unknown field for this model"))
        else:
            out.append(FieldError(_loc(loc, prefix), _rule(err)))
    return out


def validate_input(model: str, raw: Any, prefix: str = "input") -> dict[str, Any]:
    """Validate a model's input and return it with every default filled in.

    Raises ValidationFailed naming each bad field (``input.loras.0.scale``) and its rule.
    """
    schema = INPUT_MODELS.get(model)
    if schema is None:
        raise ValidationFailed([FieldError("model", f"must be one of {', '.join(MODELS)}")])
    if not isinstance(raw, dict):
        raise ValidationFailed([FieldError(prefix, "must be a JSON object")])
    try:
        parsed = schema.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc, prefix)) from None
    return parsed.model_dump(mode="json", exclude_none=True)


NUL_RULE = "must not contain the NUL character (\\u0000)"


def nul_locations(value: Any, loc: str = "") -> list[str]:
    """Where a JSON value holds a string (or object key) with U+0000. Postgres text and
    jsonb cannot store it, so it must be refused as bad input before it reaches the DB."""
    if isinstance(value, str):
        return [loc or "body"] if "\x00" in value else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{loc}.{key}" if loc else str(key)
            found += [where] if "\x00" in str(key) else nul_locations(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += nul_locations(item, f"{loc}.{index}" if loc else str(index))
    return found


def validate_job_create(raw: Any) -> tuple[JobCreate, dict[str, Any]]:
    """Validate a ``POST /v1/jobs`` body; return it and its input with defaults filled."""
    if not isinstance(raw, dict):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    try:
        job = JobCreate.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc)) from None
    input_ = validate_input(job.model, job.input)
    if nul := nul_locations(raw):
        raise ValidationFailed([FieldError(loc, NUL_RULE) for loc in nul])
    return job, input_


def with_chosen_seed(input_: dict[str, Any], pick: Callable[[int], int]) -> dict[str, Any]:
    """The input to store: a random seed (-1) becomes one chosen now by ``pick(MAX_SEED + 1)``.

    Why: the provider's list of tasks shows each task's input but not its webhook URL, so
    a job whose submit answer was lost is found there by its input alone. Identical
    requests (another service or test run on the same account, the same prompt sent
    twice) would make the search ambiguous: a job never sent could not be proved absent
    and would fail, or a job could adopt a stranger's task. A seed of its own makes every
    job's input unique (one in 2**31), and the caller can reproduce the picture from it.
    A seed the caller chose is kept as it is."""
    if input_.get("seed", RANDOM_SEED) != RANDOM_SEED:
        return input_
    return {**input_, "seed": pick(MAX_SEED + 1)}


def upstream_body(input_: dict[str, Any]) -> dict[str, Any]:
    """What we send the provider: the stored input minus our own knobs.

    We always ask for URL outputs and an async task; base64 and sync answers are
    served by this service itself from the stored outputs.
    """
    body = {k: v for k, v in input_.items() if v is not None}
    body["enable_base64_output"] = False
    body["enable_sync_mode"] = False
    return body


def output_count(input_: dict[str, Any]) -> int:
    return int(input_.get("num_images", 1))
