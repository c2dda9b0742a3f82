"""The rules service/openapi.py adds to the generated JSON Schema agree with the
validators they describe (service/schemas.py), value by value."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from service.api import openapi_doc as openapi
from service.domain.schemas import SIZE_MAX, SIZE_MIN, FluxDevLoraInput


def test_size_side_pattern_is_exactly_the_allowed_range() -> None:
    side = re.compile(rf"^{openapi.SIZE_SIDE}$")
    for n in range(SIZE_MAX + 500):
        assert bool(side.match(str(n))) == (SIZE_MIN <= n <= SIZE_MAX), n


@pytest.mark.parametrize("size", ["256*256", "1536*1024", "1000*300", "255*256", "1537*512", "0*0", "10*10"])
def test_a_size_matches_the_pattern_exactly_when_validation_accepts_it(size: str) -> None:
    schema = openapi.build([])["components"]["schemas"]["FluxDevLoraInput"]["properties"]["size"]
    try:
        FluxDevLoraInput.model_validate({"prompt": "p", "size": size})
        accepted = True
    except ValidationError:
        accepted = False
    assert bool(re.match(schema["pattern"], size)) == accepted


@pytest.mark.parametrize("url", ["http://a", "https://example.com/x.png?y=1#z", "ftp://a/b", "http://", "a:b",
                                 "http:///path", "https://user@host/"])
def test_the_url_pattern_never_admits_what_validation_refuses(url: str) -> None:
    schema = openapi.build([])["components"]["schemas"]["FluxDevLoraInput"]["properties"]["image"]
    pattern = next(s for s in schema["anyOf"] if s.get("type") == "string")["pattern"]
    try:
        FluxDevLoraInput.model_validate({"prompt": "p", "image": url})
        accepted = True
    except ValidationError:
        accepted = False
    if re.match(pattern, url):
        assert accepted, url  # the documented form is always accepted
