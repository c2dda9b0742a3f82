"""Bytes the simulator serves or takes: output images (the provider's CDN), uploaded
media, and a streamed blob of any size for benchmarks. No auth: these URLs stand for
the provider's public or presigned ones."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from devtools.simulator.api import sim_of
from devtools.simulator.images import content_type
from devtools.simulator.responses import PacedResponse, chunk_size_for, chunks_of, error
from devtools.simulator.state import COMPLETED, SimulatorState

BLOB_CHUNK = 256 * 1024


def _download_fault(sim: SimulatorState) -> str | None:
    """None, "status" (answer 500) or "cut" (drop the connection mid-body)."""
    config = sim.config
    if not sim.dice.hit(config.download_fail_rate):
        return None
    sim.stats.download_failures += 1
    if config.download_fail_mode != "random":
        return config.download_fail_mode
    return "status" if sim.dice.hit(0.5) else "cut"


def _paced(
    sim: SimulatorState, chunks: AsyncIterator[bytes], length: int, media_type: str, fault: str | None
) -> Response:
    return PacedResponse(
        chunks,
        length=length,
        media_type=media_type,
        bytes_per_second=sim.config.download_bytes_per_second,
        cut_at=length // 2 if fault == "cut" else None,
    )


async def output(request: Request) -> Response:
    """``GET /outputs/{task_id}/{index}.{ext}``: a real image of the task's size/format."""
    sim = sim_of(request)
    task = sim.tasks.get(request.path_params["task_id"])
    index_text, _, ext = str(request.path_params["filename"]).partition(".")
    if task is None or task.status != COMPLETED or not index_text.isdigit():
        return error(404, "Output not found")
    index = int(index_text)
    if index >= task.num_outputs or ext != task.output_format:
        return error(404, "Output not found")
    if sim.config.download_delay > 0:
        await asyncio.sleep(sim.config.download_delay)
    sim.stats.output_downloads += 1
    fault = _download_fault(sim)
    if fault == "status":
        return error(500, "Internal server error")
    data = await asyncio.to_thread(sim.images.get_or_render, task.image_spec(index))
    chunks = chunks_of(data, chunk_size_for(sim.config.download_bytes_per_second))
    return _paced(sim, chunks, len(data), content_type(task.output_format), fault)


async def blob(request: Request) -> Response:
    """``GET /_sim/blob/{n_bytes}``: n pseudo-random bytes made chunk by chunk, never held
    whole, so moving a 100 MB output can be benchmarked. ``?seed=`` picks the bytes.
    Download faults (delay, throttle, failure) apply as for outputs."""
    sim = sim_of(request)
    size = int(request.path_params["n_bytes"])
    try:
        seed = int(request.query_params.get("seed", "0"))
    except ValueError:
        return error(422, "seed: must be an integer")
    if sim.config.download_delay > 0:
        await asyncio.sleep(sim.config.download_delay)
    sim.stats.blob_downloads += 1
    fault = _download_fault(sim)
    if fault == "status":
        return error(500, "Internal server error")
    chunk = chunk_size_for(sim.config.download_bytes_per_second, BLOB_CHUNK)
    return _paced(sim, random_bytes(size, seed, chunk), size, "application/octet-stream", fault)


async def random_bytes(size: int, seed: int, chunk: int) -> AsyncIterator[bytes]:
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


async def put_upload(request: Request) -> Response:
    """``PUT /media/upload/{upload_id}``: the presigned-style upload URL of a ticket."""
    sim = sim_of(request)
    upload = sim.uploads.get(request.path_params["upload_id"])
    if upload is None:
        return error(404, "Upload not found")
    limit = sim.config.upload_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return error(413, f"Upload larger than {limit} bytes")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        # Checked while reading too: a chunked upload declares no length.
        if len(received) > limit:
            return error(413, f"Upload larger than {limit} bytes")
    upload.data = bytes(received)
    upload.content_type = request.headers.get("content-type") or upload.content_type
    sim.stats.uploads += 1
    return Response(status_code=200)


async def get_upload(request: Request) -> Response:
    """``GET /media/{upload_id}/{filename}``: the ``download_url`` of an upload."""
    upload = sim_of(request).uploads.get(request.path_params["upload_id"])
    if upload is None or upload.data is None:
        return error(404, "Media not found")
    return Response(upload.data, media_type=upload.content_type)
