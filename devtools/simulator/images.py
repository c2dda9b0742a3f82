"""Real, deterministic output images, so a storer is tested against real bytes.

An output is a plain picture of exactly the requested size and format: a background
colour derived from the task's seed, prompt and output index, a contrasting band, and the
index written large. The same inputs always give the same bytes, like a diffusion model
with a fixed seed.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# output_format -> (Pillow format name, MIME type)
FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
}


def content_type(fmt: str) -> str:
    return FORMATS[fmt][1]


def parse_size(size: str) -> tuple[int, int]:
    """``"1024*768"`` -> (1024, 768); the size was validated before it got here."""
    width, height = size.split("*")
    return int(width), int(height)


@dataclass(frozen=True)
class ImageSpec:
    """Everything that decides an output image's bytes."""

    width: int
    height: int
    fmt: str
    seed: int
    prompt: str
    index: int

    def colour(self) -> tuple[int, int, int]:
        digest = hashlib.sha256(f"{self.seed}\0{self.prompt}\0{self.index}".encode()).digest()
        return digest[0], digest[1], digest[2]


def render(spec: ImageSpec) -> bytes:
    """Encode the image of ``spec``; CPU-bound, so callers run it in a worker thread."""
    pil_format, _ = FORMATS[spec.fmt]
    background = spec.colour()
    red, green, blue = background
    ink = (255 - red, 255 - green, 255 - blue)
    image = Image.new("RGB", (spec.width, spec.height), background)
    draw = ImageDraw.Draw(image)
    band = max(1, spec.height // 6)
    draw.rectangle((0, spec.height - band, spec.width, spec.height), fill=ink)
    font = ImageFont.load_default(size=max(12, min(spec.width, spec.height) // 4))
    draw.text((spec.width // 10, spec.height // 10), f"#{spec.index}", fill=ink, font=font)
    small = ImageFont.load_default(size=max(10, band // 3))
    draw.text((8, spec.height - band + 4), f"seed {spec.seed}", fill=background, font=small)
    out = io.BytesIO()
    # Fixed encoder settings: the bytes must not depend on Pillow's defaults changing.
    if pil_format == "JPEG":
        image.save(out, format=pil_format, quality=85, optimize=False)
    elif pil_format == "WEBP":
        image.save(out, format=pil_format, quality=80, method=0)
    else:
        image.save(out, format=pil_format, compress_level=6)
    return out.getvalue()


class ImageCache:
    """A small LRU of rendered images: repeated downloads (retries, a storer re-running)
    should not re-encode, but a long dev session must not grow without bound."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[ImageSpec, bytes] = OrderedDict()
        # Rendering happens in worker threads, so the cache is shared across threads.
        self._lock = threading.Lock()

    def get_or_render(self, spec: ImageSpec) -> bytes:
        with self._lock:
            data = self._items.get(spec)
            if data is not None:
                self._items.move_to_end(spec)
                return data
        data = render(spec)
        with self._lock:
            self._items[spec] = data
            self._items.move_to_end(spec)
            while len(self._items) > max(0, self.capacity):
                self._items.popitem(last=False)
        return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
