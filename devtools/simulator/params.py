"""The two models' parameter tables, written from docs/provider.md alone.

The simulator must not validate with the product's own schemas (service/domain/
schemas.py): a misreading of the provider's document would then be shared by both and
no test could catch it. So the tables are copied here from the document, row by row,
and checked by a small table-driven validator. Where the document says nothing (a
maximum prompt length, leading zeros in a size) the simulator accepts, as a lenient
provider would; where it states a rule, the simulator refuses with the field's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

FLUX_DEV_LORA = "wavespeed-ai/flux-dev-lora"
FLUX_KREA_DEV_LORA = "wavespeed-ai/flux-krea-dev-lora"
OUTPUT_FORMATS = ("jpeg", "png", "webp")
SIZE_MIN, SIZE_MAX = 256, 1536
SEED_MAX = 2147483647


class InvalidInput(Exception):
    """Every problem of a submit body, each ``field: rule``; the message joins them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Param:
    """One row of a model's table: ``check`` returns the rule broken, or None."""

    name: str
    check: Callable[[Any], str | None]
    required: bool = False
    default: Any = None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if _is_number(v) and low <= v <= high else f"must be a number from {low} to {high}"


def integer(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if _is_integer(v) and low <= v <= high else f"must be an integer from {low} to {high}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def prompt(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def url(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a URL"
    parts = urlsplit(value)
    return None if parts.scheme in ("http", "https") and parts.hostname else "must be an http(s) URL"


def size(value: Any) -> str | None:
    sides = value.split("*") if isinstance(value, str) else []
    if len(sides) != 2 or not all(side.isascii() and side.isdigit() for side in sides):
        return "must be 'W*H', e.g. '1024*1024'"
    if not all(SIZE_MIN <= int(side) <= SIZE_MAX for side in sides):
        return f"W and H must each be from {SIZE_MIN} to {SIZE_MAX}"
    return None


def output_format(value: Any) -> str | None:
    return None if value in OUTPUT_FORMATS else f"must be one of {', '.join(OUTPUT_FORMATS)}"


def loras(most: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return "must be an array"
        if len(value) > most:
            return f"at most {most} items"
        return None

    return check


def lora_problems(items: list[Any]) -> list[str]:
    """``loras[].path`` (a non-empty string) and ``loras[].scale`` (0.0 to 4.0), both required."""
    problems: list[str] = []
    for index, item in enumerate(items):
        where = f"loras.{index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object with path and scale")
            continue
        problems += [f"{where}.{key}: unknown field" for key in sorted(set(item) - {"path", "scale"})]
        if not (isinstance(item.get("path"), str) and item["path"]):
            problems.append(f"{where}.path: must be a non-empty string")
        if not (_is_number(item.get("scale")) and 0.0 <= item["scale"] <= 4.0):
            problems.append(f"{where}.scale: must be a number from 0.0 to 4.0")
    return problems


_COMMON = (
    Param("prompt", prompt, required=True),
    Param("image", url),
    Param("strength", number(0.0, 1.0), default=0.8),
    Param("size", size, default="1024*1024"),
    Param("guidance_scale", number(0.0, 20.0), default=3.5),
    Param("seed", integer(-1, SEED_MAX), default=-1),
    Param("output_format", output_format, default="jpeg"),
    Param("enable_base64_output", boolean, default=False),
    Param("enable_sync_mode", boolean, default=False),
)

# The document's tables. Krea's page lists no mask_image, num_inference_steps or num_images.
TABLES: dict[str, tuple[Param, ...]] = {
    FLUX_DEV_LORA: (
        *_COMMON,
        # "only meaningful with image": the document does not say it is refused without.
        Param("mask_image", url),
        Param("loras", loras(4), default=[]),
        Param("num_inference_steps", integer(1, 50), default=28),
        Param("num_images", integer(1, 4), default=1),
    ),
    FLUX_KREA_DEV_LORA: (*_COMMON, Param("loras", loras(3), default=[])),
}
MODELS = tuple(TABLES)


def validate(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with every default filled in, or InvalidInput naming each bad field
    (unknown fields included: a parameter the model lacks is a caller's mistake)."""
    table = {param.name: param for param in TABLES[model]}
    problems = [f"{name}: unknown field for this model" for name in body if name not in table]
    out: dict[str, Any] = {}
    for name, param in table.items():
        if name not in body or body[name] is None:
            if param.required:
                problems.append(f"{name}: required")
            elif param.default is not None:
                out[name] = list(param.default) if isinstance(param.default, list) else param.default
            continue
        rule = param.check(body[name])
        if rule is not None:
            problems.append(f"{name}: {rule}")
        out[name] = body[name]
    if isinstance(out.get("loras"), list):
        problems += lora_problems(out["loras"])
    if problems:
        raise InvalidInput(problems)
    return out
