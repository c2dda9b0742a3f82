"""Content Credentials: what signing costs per stored output, beside storing unsigned.

The measured process is a child that runs the real storing path and nothing else: the
service's resources (``open_resources``) and two ``Storer`` duties on them, one with the
content signer of a test chain (``devtools/test_chain.py``) and one without. The images
(1024×1024, noise over a gradient, so they compress like photographs rather than like
flat colour: JPEG ~0.55 MB, PNG ~2.3 MB, WebP ~0.55 MB) are served over HTTP by a small
server in the parent, and moto's S3 runs in the parent too, so neither is counted.

Each round stores, for each side, ``--per-format`` jobs of one output in each format,
one job after another; the sides alternate within a round and their order alternates
between rounds (signed first, then unsigned first). Per side and format the child reports
process CPU (every thread: the event loop, boto3's pool, the signing thread) and wall time
per stored output, after one warm-up round per side. Then it times the signing call
alone, 20 times per format (the share of the difference that is C2PA's own work).

The parent then checks every job where it landed: completed; the S3 object's sha256 and
size are the recorded ones; a signed object's manifest reads back with c2pa-python and
validates but for the test root's trust; an unsigned object is the source byte for byte.
The bytes a manifest adds are the signed objects' sizes minus their sources'.

``python -m tests.benchmarks.bench_provenance [--rounds 4] [--per-format 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY, embedded_s3
from devtools.serverthread import ServerThread
from devtools.test_chain import make_test_chain
from tests.benchmarks import database, procs
from tests.manifests import UNTRUSTED, read

BUCKET = "wavespeed-jobs-bench"
MODEL = "wavespeed-ai/flux-dev-lora"
FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}
SIDES = ("signed", "plain")
SIGN_ALONE = 20
SEED_JOB = """
INSERT INTO jobs (id, owner, model, status, input, provider_task_id, provider_status, submitted_at,
                  last_news_at, run_after)
VALUES (%(id)s, 'bench', %(model)s, 'storing', %(input)s, %(task)s, 'completed', now(), now(), '2100-01-01')
"""
SEED_OUTPUT = "INSERT INTO job_outputs (job_id, index, source_url) VALUES (%(id)s, 0, %(url)s)"


def job_id(side: str, fmt: str, round_: int, n: int) -> str:
    return f"job_bench_c2pa_{side}_{fmt}_{round_}_{n}"


def photo_like(fmt: str) -> bytes:
    noise = Image.effect_noise((1024, 1024), 48)
    gradient = Image.linear_gradient("L").resize((1024, 1024))
    image = Image.merge("RGB", (noise, gradient, Image.blend(noise, gradient, 0.5)))
    out = io.BytesIO()
    pil_format, _ = FORMATS[fmt]
    image.save(out, pil_format, **({} if fmt == "png" else {"quality": 90}))
    return out.getvalue()


def image_server(images: dict[str, bytes]) -> Starlette:
    async def serve(request: Request) -> Response:
        fmt = request.path_params["fmt"]
        return Response(images[fmt], media_type=FORMATS[fmt][1])

    return Starlette(routes=[Route("/{fmt}/{name}", serve)])


# --------------------------------------------------------------------------- the child


async def _store(storer: Any, ids: list[str]) -> tuple[float, float]:
    """Make ``ids`` due, store them one after another; (CPU s, wall s) of the storing."""
    from sqlalchemy import text

    async with storer.res.engine.begin() as conn:
        await conn.execute(text("UPDATE jobs SET run_after = now() WHERE id = ANY(:ids)"), {"ids": ids})
    cpu, wall = time.process_time(), time.perf_counter()
    claimed = await storer.claim(len(ids))
    assert sorted(claimed) == sorted(ids), (claimed, ids)
    for claimed_id in claimed:
        await storer.run(claimed_id)
    return time.process_time() - cpu, time.perf_counter() - wall


async def _child(rounds: int, per_format: int, cert: str, key: str, origin: str) -> dict[str, Any]:
    from service.app import open_resources
    from service.domain.content_credentials import ContentSigner
    from service.settings import Settings
    from service.work.storer import Storer

    settings = Settings()
    signer = ContentSigner.from_files(cert, key, include_prompt=False)
    sources = {fmt: f"{origin}/{fmt}/source.{fmt}" for fmt in FORMATS}
    figures: dict[str, dict[str, list[float]]] = {f"{s}/{f}": {"cpu": [], "wall": []} for s in SIDES for f in FORMATS}
    async with open_resources(settings) as res:
        storers = {"signed": Storer(dataclasses.replace(res, content_signer=signer)), "plain": Storer(res)}
        for round_ in range(rounds + 1):  # round 0 warms both sides up and is not counted
            order = SIDES if round_ % 2 == 0 else SIDES[::-1]
            for side in order:
                for fmt in FORMATS:
                    ids = [job_id(side, fmt, round_, n) for n in range(per_format)]
                    cpu, wall = await _store(storers[side], ids)
                    if round_ > 0:
                        figures[f"{side}/{fmt}"]["cpu"].append(cpu / per_format)
                        figures[f"{side}/{fmt}"]["wall"].append(wall / per_format)
    figures.update(await _sign_alone(signer, sources))
    return figures


async def _sign_alone(signer: Any, sources: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """The signing call by itself, on each format's source, SIGN_ALONE times: the part of
    the difference above that is C2PA's, without S3, the download or the thumbnail."""
    import httpx

    from service.domain.content_credentials import Provenance

    out: dict[str, dict[str, list[float]]] = {}
    async with httpx.AsyncClient() as client:
        for fmt, url in sources.items():
            data = (await client.get(url)).content
            provenance = Provenance("job_bench", MODEL, [], 1, 0, dt.datetime.now(dt.UTC))
            cpu_times, wall_times = [], []
            for _ in range(SIGN_ALONE):
                cpu, wall = time.process_time(), time.perf_counter()
                signer.sign(io.BytesIO(data), io.BytesIO(), FORMATS[fmt][1], provenance)
                cpu_times.append(time.process_time() - cpu)
                wall_times.append(time.perf_counter() - wall)
            out[f"alone/{fmt}"] = {"cpu": cpu_times, "wall": wall_times}
    return out


# --------------------------------------------------------------------------- the parent


def _env(database_url: str, s3_endpoint: str) -> dict[str, str]:
    return {
        **os.environ, "DATABASE_URL": database_url, "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        "WAVESPEED_API_KEY": "bench-not-used", "WAVESPEED_BASE_URL": "http://127.0.0.1:9",
        "WAVESPEED_WEBHOOK_SECRET": "whsec_bench_provenance_0123456789", "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "ALLOW_PRIVATE_NETWORKS": "true", "LOG_LEVEL": "warning", "LOG_FORMAT": "json",
    }


def verify(url: str, s3: Any, images: dict[str, bytes]) -> tuple[list[str], dict[str, list[int]]]:
    """Problems found, and the bytes each signed object adds to its source, by format."""
    problems: list[str] = []
    added: dict[str, list[int]] = {fmt: [] for fmt in FORMATS}
    with database.connect(url) as conn:
        rows = conn.execute("SELECT j.id, j.status, o.key, o.size_bytes, o.sha256, o.content_credentials "
                            "FROM jobs j JOIN job_outputs o ON o.job_id = j.id").fetchall()
    for id_, status, key, size, sha, credentials in rows:
        side, fmt = id_.split("_")[3], id_.split("_")[4]
        if status != "completed" or key is None:
            problems.append(f"{id_} is {status}, key {key}")
            continue
        stored = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        if (len(stored), hashlib.sha256(stored).hexdigest()) != (size, sha):
            problems.append(f"{id_}: the S3 object is not the recorded size and sha256")
        if side == "plain" and (stored != images[fmt] or credentials):
            problems.append(f"{id_}: the unsigned object is not its source")
        if side == "signed":
            reading = read(stored, FORMATS[fmt][1])
            if reading.failures != [UNTRUSTED] or not credentials:
                problems.append(f"{id_}: the manifest does not validate: {reading.failures}")
            added[fmt].append(len(stored) - len(images[fmt]))
    return problems, added


def seed(url: str, rounds: int, per_format: int, base: str) -> None:
    with database.connect(url) as conn:
        for round_ in range(rounds + 1):
            for side in SIDES:
                for fmt in FORMATS:
                    for n in range(per_format):
                        id_ = job_id(side, fmt, round_, n)
                        conn.execute(SEED_JOB, {"id": id_, "model": MODEL, "task": "task_" + id_,
                                                "input": json.dumps({"prompt": "bench", "seed": n,
                                                                     "output_format": fmt})})
                        conn.execute(SEED_OUTPUT, {"id": id_, "url": f"{base}/{fmt}/{id_}.{fmt}"})


def report(figures: dict[str, dict[str, list[float]]], added: dict[str, list[int]], images: dict[str, bytes]) -> None:
    print(f"{'format':<6} {'source':>9} | {'CPU ms/output plain':>20} {'signed':>8} {'+':>7} | "
          f"{'wall ms/output plain':>21} {'signed':>8} {'+':>7} | manifest adds | signing alone CPU, wall ms")
    for fmt in FORMATS:
        plain, signed, alone = figures[f"plain/{fmt}"], figures[f"signed/{fmt}"], figures[f"alone/{fmt}"]
        cpu_p, cpu_s = statistics.median(plain["cpu"]) * 1e3, statistics.median(signed["cpu"]) * 1e3
        wall_p, wall_s = statistics.median(plain["wall"]) * 1e3, statistics.median(signed["wall"]) * 1e3
        print(f"{fmt:<6} {len(images[fmt]):>9,} | {cpu_p:>20.1f} {cpu_s:>8.1f} {cpu_s - cpu_p:>+7.1f} | "
              f"{wall_p:>21.1f} {wall_s:>8.1f} {wall_s - wall_p:>+7.1f} | "
              f"{statistics.median(added[fmt]):>7,.0f} bytes | "
              f"{statistics.median(alone['cpu']) * 1e3:.1f}, {statistics.median(alone['wall']) * 1e3:.1f}")
    print(f"(medians over the rounds of each round's mean per output; signing alone: median of {SIGN_ALONE} calls)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_provenance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds (after one warm-up round)")
    parser.add_argument("--per-format", type=int, default=4, help="jobs per side, format and round")
    parser.add_argument("--child", nargs=3, metavar=("CERT", "KEY", "ORIGIN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = asyncio.run(_child(args.rounds, args.per_format, *args.child))
        print("BENCH_JSON " + json.dumps(figures), flush=True)
        return 0

    print(f"== provenance benchmark: {args.rounds} rounds × {args.per_format} jobs per side and format, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    images = {fmt: photo_like(fmt) for fmt in FORMATS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        database.fresh_database("wsj_bench_provenance") as url,
        embedded_s3() as s3_endpoint,
        ServerThread(image_server(images)) as origin,
    ):
        chain = make_test_chain(Path(tmp))
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=DEV_ACCESS_KEY, aws_secret_access_key=DEV_SECRET_KEY)
        s3.create_bucket(Bucket=BUCKET)
        seed(url, args.rounds, args.per_format, origin.url)
        argv_child = [procs.PYTHON, "-m", "tests.benchmarks.bench_provenance", "--rounds", str(args.rounds),
                      "--per-format", str(args.per_format),
                      "--child", str(chain.chain_path), str(chain.key_path), origin.url]
        child = procs.spawn(argv_child, env=_env(url, s3_endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = child.communicate(timeout=900)
        finally:
            procs.stop(child)
        line = next((ln for ln in out.decode().splitlines() if ln.startswith("BENCH_JSON ")), None)
        if child.returncode != 0 or line is None:
            print(f"the storing child failed (exit {child.returncode}):\n{err.decode()[-3000:]}")
            return 1
        problems, added = verify(url, s3, images)
    report(json.loads(line[len("BENCH_JSON "):]), added, images)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if problems:
        print("VERIFY FAILED:\n  " + "\n  ".join(problems[:20]))
        return 1
    print("verified: every job completed, every object's size and sha256 as recorded, every signed manifest "
          "valid but for the test root's trust, every unsigned object its source")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
