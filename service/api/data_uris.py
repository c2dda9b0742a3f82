"""The facade's ``enable_base64_output`` answers: each stored output as a ``data:`` URI.

A client polling ``/api/v3/predictions/{id}/result`` used to have every output read from
S3 and encoded again on every GET, with no bound on how many reads ran at once: a few
clients polling large images held S3 connections, threads and memory without limit. A
stored object never changes (one key per job and output, written once), so its URI is
kept here (least recently used first out, at most CACHE_CHARS in all), at most READS
objects are read at once per process, and polls of an object being read share its read.
"""

from __future__ import annotations

import asyncio
import base64
from collections import OrderedDict
from typing import Protocol

READS = 4
CACHE_CHARS = 48 * 1024 * 1024  # ~36 MB of images as base64


class Reader(Protocol):
    async def get_bytes(self, key: str) -> bytes: ...


class DataUris:
    """One per process (made on first use, beside the app's resources)."""

    def __init__(self, reads: int = READS, budget: int = CACHE_CHARS) -> None:
        self._reads = asyncio.Semaphore(reads)
        self._budget = budget
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._size = 0
        self._loading: dict[str, asyncio.Future[str]] = {}

    def _cached(self, key: str) -> str | None:
        uri = self._cache.get(key)
        if uri is not None:
            self._cache.move_to_end(key)
        return uri

    def _keep(self, key: str, uri: str) -> None:
        if len(uri) > self._budget or key in self._cache:
            return
        self._cache[key] = uri
        self._size += len(uri)
        while self._size > self._budget:
            _, dropped = self._cache.popitem(last=False)
            self._size -= len(dropped)

    async def uri(self, storage: Reader, key: str, content_type: str | None) -> str:
        """The stored object ``key`` as ``data:<type>;base64,…``; polls of an object being
        read wait for that one read."""
        cached = self._cached(key)
        if cached is not None:
            return cached
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load(storage, key, content_type))
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(loading)  # a poll that gives up does not cancel the others' read

    def _loaded(self, key: str, done: asyncio.Future[str]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: a read every poll gave up on logs nothing

    async def _load(self, storage: Reader, key: str, content_type: str | None) -> str:
        async with self._reads:
            data = await storage.get_bytes(key)
            encoded = await asyncio.to_thread(base64.b64encode, data)  # megabytes: off the event loop
        uri = f"data:{content_type or 'application/octet-stream'};base64,{encoded.decode('ascii')}"
        self._keep(key, uri)
        return uri
