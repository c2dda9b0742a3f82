"""Thumbnails for the history page: 256 px WebP, made once when an output is stored.

Cost matters here: the storer makes one per output, on the service's one core. A JPEG
(the provider's default format) is decoded in draft mode: libjpeg scales by 1/2, 1/4 or
1/8 while decoding, so a 1024 px image is decoded straight to 256 px instead of to a
million pixels that are then thrown away (about 8× less work; tests/unit/test_thumbnails.py
checks that the draft is taken). PNG and WebP have no such mode and are decoded whole.
The WebP is encoded with a fast method: a 256 px preview does not need the smallest file.

Time matters too: a job's callback waits for its copy, so the thumbnail is made and
uploaded (``ThumbnailCopy``) while the output's own PUT is in flight, not after it.
"""

from __future__ import annotations

import asyncio
import io
from functools import partial

import structlog
from PIL import Image

from service.clients.storage import Storage, StorageError

log = structlog.get_logger(__name__)

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


def thumbnail_key(output_key: str) -> str:
    """The thumbnail's key, beside its output's: deterministic, so a retry overwrites it."""
    return output_key.rsplit(".", 1)[0] + ".thumb.webp"


class ThumbnailCopy:
    """One output's thumbnail, made and uploaded in the background of the output's copy.

    ``start`` once the output's bytes are all in hand; ``key`` after the output's own
    PUT returned. Best effort: a thumbnail that cannot be made is left out (None), but a
    failed PUT of one that was made is S3's failure (StorageError), as the output's is.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._task: asyncio.Task[str | None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, output_key: str, data: bytes) -> None:
        self._task = asyncio.create_task(self._make_and_put(output_key, data))

    async def _make_and_put(self, output_key: str, data: bytes) -> str | None:
        key = thumbnail_key(output_key)
        try:
            # Decoding is CPU work (native, mostly outside the GIL): off the event loop,
            # in the same thread as its PUT.
            made = await self._storage.put_made(key, partial(_thumbnail, data), "image/webp")
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001  a thumbnail is optional: any failure leaves it out
            log.warning("thumbnail.failed", key=output_key, error=type(exc).__name__)
            return None
        return key if made else None

    async def key(self) -> str | None:
        """The uploaded thumbnail's key; None when none was started or made."""
        return await self._task if self._task is not None else None

    async def settle(self) -> None:
        """After the output's copy failed: wait until the thumbnail is done, whatever it
        did, so nothing of the job's is still being uploaded once the failure is handled
        (a retry overwrites what was; an erasure lists the job's prefix)."""
        task = self._task
        if task is None:
            return
        # Not cancelled: its thread would PUT anyway, unseen. asyncio.wait neither raises
        # the task's failure nor cancels the task when this wait is cancelled.
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the output's failure is the one that counts
