"""The owner is in the SQL of every read of a job's events, callback deliveries and
outputs, not only in the job read that comes before them: given another owner's job id,
the statements themselves yield nothing (the API's 404 for another owner's job is
test_lifecycle.py::test_another_owner_gets_404_for_every_job_call)."""

from __future__ import annotations

import asyncio
from typing import Any

from service.db import jobs
from service.db.engine import create_engine
from service.db.history import job_deliveries, job_events
from tests.conftest import Service
from tests.integration.helpers import submit, wait_terminal
from tests.servers import WebhookCatcher


async def reads(database_url: str, job_id: str, owner: str) -> dict[str, Any]:
    """What each read of the job's parts gives ``owner``."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return {
                "events": await job_events(conn, job_id, owner=owner),
                "deliveries": await job_deliveries(conn, job_id, owner=owner),
                "outputs": await jobs.get_outputs(conn, [job_id], owner=owner),
                "outputs of pairs": await jobs.owned_outputs(conn, [(owner, job_id)]),
            }
    finally:
        await engine.dispose()


def test_another_owners_job_id_yields_no_events_deliveries_or_outputs(
    service: Service, catcher: WebhookCatcher,
) -> None:
    owner_key, stranger = service.new_key(), f"stranger_{id(catcher):x}"
    with service.client(owner_key) as client:
        job = wait_terminal(client, submit(client, callback_url=catcher.url())["id"])
    assert job["status"] == "completed"
    catcher.wait_for(1, timeout=20)
    url = service.settings.database_url or ""

    own = asyncio.run(reads(url, job["id"], service.keys[owner_key]))
    assert own["events"] and own["deliveries"]
    assert [o.key for o in own["outputs"][job["id"]]] == [o["key"] for o in job["outputs"]]
    assert own["outputs of pairs"] == own["outputs"]

    assert asyncio.run(reads(url, job["id"], stranger)) == {
        "events": [], "deliveries": [], "outputs": {}, "outputs of pairs": {}}
    with service.client() as other:  # and through the API: a 404, as before
        assert other.get(f"/v1/jobs/{job['id']}/events").status_code == 404
        assert other.get(f"/jobs/{job['id']}").status_code in (303, 401, 404)
