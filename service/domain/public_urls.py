"""What of a URL someone gave the service may travel beyond them: the scheme, host and
path, never the query, fragment, user or password, where a URL's access so often rides
(a presigned S3 URL's signature, ``?token=``, ``https://user:pass@host``).

One rule for every place that shows a URL of someone's input to others or keeps it where
others read: Content Credentials (an image travels far beyond its owner), signed receipts
(passed on as proof, and a signed document cannot be redacted without breaking its
signature), and span attributes (read by whoever runs the trace collector)."""

from __future__ import annotations

from typing import Any

# The input fields that hold URLs (service/domain/schemas.py): each LoRA's ``path`` too.
URL_FIELDS = ("image", "mask_image")


def public_reference(url: str) -> str:
    """``url`` without query, fragment, user and password. Cut by hand rather than
    parsed, so a URL no parser accepts loses them too: after ``://``, everything up to the
    last ``@`` goes (a password may hold a ``/``)."""
    head = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = head.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else head


def public_input(input_: dict[str, Any]) -> dict[str, Any]:
    """A job's input with every URL in it (``image``, ``mask_image``, each LoRA's ``path``)
    cut to its public reference; everything else as given."""
    shown = dict(input_)
    for name in URL_FIELDS:
        if isinstance(shown.get(name), str):
            shown[name] = public_reference(shown[name])
    loras = shown.get("loras")
    if isinstance(loras, list):
        shown["loras"] = [{**lora, "path": public_reference(lora["path"])}
                          if isinstance(lora, dict) and isinstance(lora.get("path"), str) else lora
                          for lora in loras]
    return shown
