"""The claim's "is this slot's job still in flight" is a primary-key probe, whatever
the planner thinks of the jobs table.

Revision 0009 wrote it as ``s.job_id IS NULL OR NOT EXISTS (… jobs j WHERE j.id =
s.job_id …)``. The OR keeps the EXISTS from becoming an anti-join, so the planner may
run it as a *hashed* subplan: one scan of every job ever sent (``jobs_submit_sent``)
to build the hash, in the claim of every slot. It chose that on the benchmark's
database, where few jobs had been sent (bench_fairness's plan at 1,000,100 queued); an
owner's in-flight count (for ``max_in_flight``) was planned as a nested loop over that
same index per slot. On a database with a long history either is a scan of the
history per claim. A scalar subquery cannot be hashed: written as one, the check is a
probe of ``jobs_pkey`` for each slot row the walk passes, and nothing else. (A slot
with no job answers NULL there, i.e. free, so the ``IS NULL`` arm is not needed.)

The bodies are revision 0009's with that one expression replaced (0009's module builds
them; this sets its two fragments first).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import importlib.util
from pathlib import Path
from types import ModuleType

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The job of slot s is in flight: sent (or being sent) and not yet heard to be finished.
SLOT_BUSY = ("coalesce((SELECT j.submit_sent_at IS NOT NULL AND j.status IN ('queued', 'submitted', 'processing') "
             "FROM jobs j WHERE j.id = s.job_id), false)")
# Revision 0009's fragments, with their {max} / {owner} placeholders.
FREE_SLOT = (
    "SELECT s.slot FROM provider_slots s\n"
    "    WHERE s.slot < {max} AND NOT " + SLOT_BUSY + "\n"
    "    ORDER BY s.slot LIMIT 1\n"
    "    FOR UPDATE OF s SKIP LOCKED\n"
)
OWNER_IN_FLIGHT = (
    "SELECT count(*)::integer FROM provider_slots s WHERE s.owner = {owner} AND s.slot < {max} AND " + SLOT_BUSY
)


def _revision_0009() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "claim_0009", Path(__file__).with_name("0009_claim_without_nested_functions.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    claim = _revision_0009()
    claim.FREE_SLOT = FREE_SLOT
    claim.OWNER_IN_FLIGHT = OWNER_IN_FLIGHT
    claim.upgrade()


def downgrade() -> None:
    _revision_0009().upgrade()
