"""Thumbnails for the history page: 256 px WebP, made once when an output is stored."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

THUMBNAIL_PX = 256
# Refuse decompression bombs: Flux outputs are at most 1536 × 1536.
MAX_PIXELS = 8192 * 8192


def _thumbnail(data: bytes) -> bytes | None:
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_PIXELS:
            return None
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="WEBP", quality=80)
        return out.getvalue()


async def make_thumbnail(data: bytes) -> bytes | None:
    """Decoding is CPU work: done off the event loop."""
    return await asyncio.to_thread(_thumbnail, data)
