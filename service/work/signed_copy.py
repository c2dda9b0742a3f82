"""An output copied into S3 with Content Credentials embedded on the way.

Signing needs the whole image (C2PA binds the manifest to a hash of every other byte
and writes it inside the file), so with a content signer the download goes to a spool
file first: in memory up to one S3 part, on disk beyond, so memory stays bounded
whatever the image size. The signed copy is written to a second spool and streamed to
S3 from there; the recorded size and sha256 are the signed bytes'. Signing runs in a
worker thread (the C2PA library is native code; the event loop keeps serving).

Nothing is uploaded unless signing succeeded: a failure (SigningFailed, with C2PA's
reason) is the store's failure, never an unsigned image.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO

from service.clients.storage import Storage, StoredObject
from service.domain.content_credentials import ContentSigner, Provenance


async def _read(spool: IO[bytes], size: int) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(spool.read, size):
        yield chunk


async def put_signed(storage: Storage, signer: ContentSigner, key: str, chunks: AsyncIterator[bytes],
                     content_type: str, provenance: Provenance) -> StoredObject:
    """Spool ``chunks``, embed a signed manifest, upload the result to ``key``."""
    spill = storage.part_size
    with tempfile.SpooledTemporaryFile(max_size=spill) as source, \
            tempfile.SpooledTemporaryFile(max_size=spill) as signed:
        async for chunk in chunks:
            source.write(chunk)
        source.seek(0)
        await asyncio.to_thread(signer.sign, source, signed, content_type, provenance)
        signed.seek(0)
        return await storage.put_stream(key, _read(signed, spill), content_type)
