"""Thumbnails: JPEGs are decoded in draft mode (scaled while decoding), every format
still gives a ≤ 256 px WebP, and decompression bombs are refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from service.work import thumbnails


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format=fmt)
    return out.getvalue()


def test_a_jpeg_is_scaled_while_decoding() -> None:
    image = thumbnails.thumbnail_image(_encoded("JPEG", (1024, 1024)))
    assert image is not None
    # libjpeg's draft scale was chosen (1/4 for 1024 → 256): the full image was never decoded.
    assert image.decoderconfig[0] == 4
    assert image.size == (256, 256)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("size", [(1536, 1024), (256, 1536), (300, 300)])
def test_every_format_gives_a_small_webp(fmt: str, size: tuple[int, int]) -> None:
    thumb = thumbnails._thumbnail(_encoded(fmt, size))
    assert thumb is not None
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.format == "WEBP"
        assert max(image.size) <= thumbnails.THUMBNAIL_PX
        assert abs(image.width / image.height - size[0] / size[1]) < 0.05


def test_a_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thumbnails, "MAX_PIXELS", 100 * 100)
    assert thumbnails._thumbnail(_encoded("PNG", (101, 100))) is None
