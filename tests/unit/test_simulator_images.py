"""Output images: real pictures of exactly the requested size and format, deterministic."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from devtools.simulator.images import FORMATS, ImageCache, ImageSpec, content_type, parse_size, render

PIL_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("size", ["256*256", "1024*768", "300*1536", "1536*1536"])
def test_render_has_requested_size_and_format(fmt: str, size: str) -> None:
    width, height = parse_size(size)
    data = render(ImageSpec(width, height, fmt, seed=7, prompt="a cat", index=0))
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (width, height)
        assert image.format == PIL_NAMES[fmt]
    assert content_type(fmt) == f"image/{fmt}"


def test_render_is_deterministic_per_seed_prompt_and_index() -> None:
    spec = ImageSpec(512, 512, "png", seed=42, prompt="a dog", index=1)
    assert render(spec) == render(spec)
    assert render(spec) != render(ImageSpec(512, 512, "png", seed=42, prompt="a dog", index=2))
    assert spec.colour() != ImageSpec(512, 512, "png", seed=43, prompt="a dog", index=1).colour()


def test_parse_size() -> None:
    assert parse_size("1024*768") == (1024, 768)


def test_cache_keeps_at_most_capacity_and_reuses_bytes() -> None:
    cache = ImageCache(capacity=2)
    specs = [ImageSpec(256, 256, "jpeg", seed=1, prompt="p", index=i) for i in range(3)]
    first = cache.get_or_render(specs[0])
    assert cache.get_or_render(specs[0]) is first  # served from the cache
    cache.get_or_render(specs[1])
    cache.get_or_render(specs[0])  # touch 0: now 1 is the least recently used
    cache.get_or_render(specs[2])
    assert len(cache) == 2
    assert cache.get_or_render(specs[0]) is first
    cache.clear()
    assert len(cache) == 0


def test_cache_of_zero_keeps_nothing() -> None:
    cache = ImageCache(capacity=0)
    cache.get_or_render(ImageSpec(256, 256, "png", seed=1, prompt="p", index=0))
    assert len(cache) == 0
