"""Which database errors a request answers as 503 (service/db/engine.py ``unavailable``):
the database out of reach, never a statement that was wrong."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from service.db.engine import unavailable


def _dbapi(kind: type[sa_exc.DBAPIError], invalidated: bool = False) -> sa_exc.DBAPIError:
    return kind("SELECT 1", {}, Exception("driver said no"), connection_invalidated=invalidated)


@pytest.mark.parametrize("exc", [
    _dbapi(sa_exc.OperationalError), _dbapi(sa_exc.InterfaceError), sa_exc.TimeoutError("pool"),
    _dbapi(sa_exc.DBAPIError, invalidated=True), _dbapi(sa_exc.InternalError, invalidated=True),
    ConnectionRefusedError(111, "refused"), OSError(113, "no route"),
], ids=["operational", "interface", "pool timeout", "invalidated", "invalidated internal", "refused", "oserror"])
def test_the_database_out_of_reach_is_a_503_with_retry_after(exc: BaseException) -> None:
    busy = unavailable(exc)
    assert busy is not None and busy.status_code == 503 and busy.retry_after == 1
    assert "driver said no" not in busy.message  # the driver's text (it may hold data) is not echoed


@pytest.mark.parametrize("exc", [
    _dbapi(sa_exc.ProgrammingError), _dbapi(sa_exc.IntegrityError), _dbapi(sa_exc.DataError),
    _dbapi(sa_exc.InternalError), ValueError("bad"), KeyError("k"),
], ids=["programming", "integrity", "data", "internal", "value", "key"])
def test_a_statement_that_failed_is_not_called_unavailable(exc: BaseException) -> None:
    assert unavailable(exc) is None
