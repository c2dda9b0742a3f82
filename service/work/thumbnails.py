"""Thumbnails for the history page: 256 px WebP, made once when an output is stored.

Cost matters here: the storer makes one per output, on the service's one core. A JPEG
(the provider's default format) is decoded in draft mode: libjpeg scales by 1/2, 1/4 or
1/8 while decoding, so a 1024 px image is decoded straight to 256 px instead of to a
million pixels that are then thrown away (about 8× less work; tests/unit/test_thumbnails.py
checks that the draft is taken). PNG and WebP have no such mode and are decoded whole.
The WebP is encoded with a fast method: a 256 px preview does not need the smallest file.
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image

THUMBNAIL_PX = 256
# Refuse decompression bombs: Flux outputs are at most 1536 × 1536.
MAX_PIXELS = 8192 * 8192
WEBP_METHOD = 1  # 0 (fastest) … 6 (smallest); 1 is ~3× faster than the default 4 at 256 px


def thumbnail_image(data: bytes) -> Image.Image | None:
    """The decoded, reduced image (``None`` for a decompression bomb)."""
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_PIXELS:
        return None
    if image.format == "JPEG":
        # Scale while decoding to the smallest size still at least THUMBNAIL_PX a side.
        image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return image


def _thumbnail(data: bytes) -> bytes | None:
    image = thumbnail_image(data)
    if image is None:
        return None
    with image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="WEBP", quality=80, method=WEBP_METHOD)
        return out.getvalue()


async def make_thumbnail(data: bytes) -> bytes | None:
    """Decoding is CPU work: done off the event loop."""
    return await asyncio.to_thread(_thumbnail, data)
