"""The facade's base64 outputs (service/api/data_uris.py): at most READS objects read at
once however many polls arrive, each object read once while it stays in the cache, and
the cache bounded by its size (least recently used out first)."""

from __future__ import annotations

import asyncio
import base64

from service.api.data_uris import DataUris


class CountingReader:
    """Stands for S3 in this unit test: notes how many reads run at once and of what."""

    def __init__(self, size: int = 10) -> None:
        self.size, self.running, self.most, self.reads = size, 0, 0, []  # type: ignore[var-annotated]

    async def get_bytes(self, key: str) -> bytes:
        self.running += 1
        self.most = max(self.most, self.running)
        self.reads.append(key)
        await asyncio.sleep(0.01)
        self.running -= 1
        return key.encode() * self.size


async def test_reads_are_bounded_however_many_polls_come_at_once() -> None:
    reader, uris = CountingReader(), DataUris(reads=4)
    got = await asyncio.gather(*(uris.uri(reader, f"k{i}", "image/png") for i in range(40)))
    assert reader.most == 4 and len(reader.reads) == 40
    assert got[7] == "data:image/png;base64," + base64.b64encode(b"k7" * 10).decode()


async def test_an_object_is_read_once_for_every_poll_while_cached() -> None:
    reader, uris = CountingReader(), DataUris(reads=2)
    first = await asyncio.gather(*(uris.uri(reader, "same", "image/jpeg") for _ in range(25)))
    again = await uris.uri(reader, "same", "image/jpeg")
    assert reader.reads == ["same"] and set(first) == {again}


async def test_the_cache_keeps_at_most_its_budget_dropping_the_least_recently_used() -> None:
    reader = CountingReader(size=100)  # each URI ~290 characters
    uris = DataUris(reads=1, budget=700)
    for key in ("a0", "b0", "a0", "c0"):  # a0 used again before c0 arrives: b0 goes
        await uris.uri(reader, key, None)
    await uris.uri(reader, "a0", None)
    await uris.uri(reader, "b0", None)
    assert reader.reads == ["a0", "b0", "c0", "b0"]
