"""The JSON Schema that service/domain/schemas.py declares beside its validator functions
(pydantic cannot read a function) agrees with those validators, value by value."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from service.domain.schemas import SIZE_MAX, SIZE_MIN, SIZE_SIDE, FluxDevLoraInput


def _property(name: str) -> dict[str, Any]:
    prop: dict[str, Any] = FluxDevLoraInput.model_json_schema()["properties"][name]
    # A nullable field is anyOf [string, null]: the rules belong to the string.
    return next((s for s in prop.get("anyOf", []) if s.get("type") == "string"), prop)


def _ecma(pattern: str) -> re.Pattern[str]:
    """A JSON Schema pattern as JavaScript reads it: its ``$`` is the very end, never
    before a trailing newline as Python's is."""
    return re.compile(pattern.removesuffix("$") + r"\Z" if pattern.endswith("$") else pattern)


def _accepted(**fields: str) -> bool:
    try:
        FluxDevLoraInput.model_validate({"prompt": "p", **fields})
    except ValidationError:
        return False
    return True


def test_size_side_pattern_is_exactly_the_allowed_range() -> None:
    side = re.compile(rf"^{SIZE_SIDE}$")
    for n in range(SIZE_MAX + 500):
        assert bool(side.match(str(n))) == (SIZE_MIN <= n <= SIZE_MAX), n


@pytest.mark.parametrize("size", ["256*256", "1536*1024", "1000*300", "255*256", "1537*512", "0*0", "10*10",
                                  "0256*256", "256*256\n"])
def test_a_size_matches_the_pattern_exactly_when_validation_accepts_it(size: str) -> None:
    assert bool(_ecma(_property("size")["pattern"]).search(size)) == _accepted(size=size)


@pytest.mark.parametrize("url", ["http://a", "https://example.com/x.png?y=1#z", "ftp://a/b", "http://", "a:b",
                                 "http:///path", "https://user@host/"])
def test_the_url_pattern_never_admits_what_validation_refuses(url: str) -> None:
    if _ecma(_property("image")["pattern"]).search(url):
        assert _accepted(image=url), url  # the documented form is always accepted


def test_a_mask_without_an_image_is_refused_by_schema_and_validator_alike() -> None:
    assert FluxDevLoraInput.model_json_schema()["dependentRequired"] == {"mask_image": ["image"]}
    assert not _accepted(mask_image="https://example.com/m.png")
