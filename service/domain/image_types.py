"""The only content types the bucket ever holds, told from the bytes themselves.

A provider's Content-Type header or a ``data:`` URL's declared type is a claim; the
first bytes are evidence. Anything that is not JPEG, PNG or WebP is never stored, so
nothing the bucket serves can be HTML or script, whatever a response claimed."""

from __future__ import annotations

EXTENSIONS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
CONTENT_TYPES = {v: k for k, v in EXTENSIONS.items()}
SNIFF_BYTES = 12  # enough for every signature below
NOT_AN_IMAGE = "is not a JPEG, PNG or WebP image"


def sniff(head: bytes) -> str | None:
    """The content type of an image whose first bytes are ``head``, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def content_type_of_key(key: str) -> str:
    """The content type a stored object's key stands for (``….jpeg`` → image/jpeg);
    presigned GETs pin it so the bucket never answers with another."""
    return CONTENT_TYPES.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")
