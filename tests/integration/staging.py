"""Jobs put straight into the `storing` state, with the output sources a test chooses:
what a provider's completion would leave, without depending on what it sends."""

from __future__ import annotations

import io
from collections.abc import Sequence

import psycopg
from PIL import Image
from psycopg.types.json import Jsonb

from service.db.jobs import new_job_id
from service.domain.schemas import validate_input

MODEL = "wavespeed-ai/flux-dev-lora"


def image_bytes(fmt: str = "JPEG", size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def stage_storing(database_url: str, owner: str, sources: Sequence[str], num_images: int = 1) -> str:
    """A job in `storing` whose provider reported ``sources`` as its outputs."""
    job_id = new_job_id()
    input_ = validate_input(MODEL, {"prompt": "staged", "size": "256*256", "num_images": num_images})
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO jobs (id, owner, model, input, status, provider_task_id, provider_status, submitted_at, "
            "run_after, deadline_at) VALUES (%s, %s, %s, %s, 'storing', %s, 'completed', now(), now(), "
            "now() + interval '30 minutes')",
            (job_id, owner, MODEL, Jsonb(input_), "task_" + job_id),
        )
        for index, source in enumerate(sources):
            conn.execute("INSERT INTO job_outputs (job_id, index, source_url) VALUES (%s, %s, %s)",
                         (job_id, index, source))
    return job_id
