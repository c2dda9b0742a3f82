"""Reading Content Credentials back in tests, with c2pa-python's Reader (the same
library a backend would use), offline: no OCSP, no remote manifests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import c2pa

READ_SETTINGS = {"verify": {"ocsp_fetch": False, "remote_manifest_fetch": False}}
# What a test root can honestly show: every check passes but the root's trust.
UNTRUSTED = "signingCredential.untrusted"


@dataclass(frozen=True)
class Reading:
    state: str | None  # c2pa's validation state: Invalid, Valid or Trusted
    failures: list[str]  # the failure codes of the active manifest
    manifest: dict[str, Any]

    @property
    def created(self) -> dict[str, Any]:
        """The manifest's c2pa.created action."""
        for assertion in self.manifest.get("assertions", []):
            if assertion["label"].startswith("c2pa.actions"):
                for action in assertion["data"]["actions"]:
                    if action["action"] == "c2pa.created":
                        return dict(action)
        raise AssertionError(f"no c2pa.created action in {self.manifest}")


def read(data: bytes, content_type: str) -> Reading:
    with c2pa.Context.from_dict(READ_SETTINGS) as context, \
            c2pa.Reader(content_type, io.BytesIO(data), context=context) as reader:
        results = reader.get_validation_results() or {}
        failures = [f["code"] for f in (results.get("activeManifest") or {}).get("failure", [])]
        return Reading(reader.get_validation_state(), failures, reader.get_active_manifest() or {})


def flip_one_byte(data: bytes, content_type: str) -> bytes:
    """The image with one bit of its picture data changed (not of the manifest)."""
    marker = {"image/png": b"IDAT", "image/jpeg": b"\xff\xda", "image/webp": b"VP8"}[content_type]
    at = data.rindex(marker) + len(marker) + 8
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
