"""What a job id looks like: ``job_`` and 26 characters of Crockford's base32 (lower
case), 10 of milliseconds then 16 random (service/db/jobs.py makes them).

A value that cannot be one (too long, a NUL, any other character) is refused as a 404
before any query: nothing a client writes in a path reaches the database, a batched
read shared with other owners, or a log line, unless it could be a job's id."""

from __future__ import annotations

from service.domain.errors import NotFound

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
JOB_PREFIX = "job_"
JOB_ID_LENGTH = len(JOB_PREFIX) + 26
_CHARS = frozenset(CROCKFORD)


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of a job id (no pattern: a length check first,
    then one pass over at most 26 characters)."""
    return len(value) == JOB_ID_LENGTH and value.startswith(JOB_PREFIX) and _CHARS.issuperset(value[4:])


def checked_job_id(value: str) -> str:
    """``value`` if it could be a job's id, else the 404 any unknown job gets."""
    if not is_job_id(value):
        raise NotFound("no job with that id")
    return value
