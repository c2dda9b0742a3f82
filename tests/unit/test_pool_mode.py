"""DATABASE_POOL_MODE and DATABASE_DIRECT_URL: what each mode opens asyncpg with, which URL
what needs a session of its own uses, and the settings refused at start.
(tests/integration/test_pgbouncer.py runs the service through a real PgBouncer.)"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.db.engine import SESSION_SETTINGS, asyncpg_options
from service.settings import Settings

DIRECT = "postgresql://app@db.internal:5432/jobs"
POOLER = "postgresql://app@pgbouncer.internal:6432/jobs"


def settings(**values: Any) -> Settings:
    return Settings(**values)


def test_unset_pool_mode_is_todays_behaviour_one_url_for_everything() -> None:
    s = settings(database_url=DIRECT)
    assert s.database_pool_mode is None and not s.transaction_pooling
    assert s.session_database_url == DIRECT
    assert asyncpg_options(s.transaction_pooling) == {"server_settings": SESSION_SETTINGS}


def test_transaction_mode_opens_asyncpg_without_statement_cache_or_startup_parameters() -> None:
    s = settings(database_url=POOLER, database_direct_url=DIRECT, database_pool_mode="transaction")
    assert s.transaction_pooling
    assert asyncpg_options(s.transaction_pooling) == {"statement_cache_size": 0,
                                                      "server_settings": {"client_encoding": "UTF8"}}
    assert s.session_database_url == DIRECT  # LISTEN/NOTIFY and migrations


def test_transaction_mode_without_a_direct_url_is_refused_at_start_naming_it() -> None:
    with pytest.raises(ValidationError, match="DATABASE_DIRECT_URL is required when DATABASE_POOL_MODE=transaction"):
        settings(database_url=POOLER, database_pool_mode="transaction")


@pytest.mark.parametrize("mode", ["statement", "Transaction ", "pgbouncer", "transaction\x00"])
def test_an_unknown_pool_mode_is_refused_at_start_naming_it(mode: str) -> None:
    with pytest.raises(ValidationError, match="database_pool_mode"):
        settings(database_url=POOLER, database_direct_url=DIRECT, database_pool_mode=mode)


def test_an_empty_pool_mode_or_direct_url_is_unset() -> None:
    s = settings(database_url=DIRECT, database_pool_mode="", database_direct_url="")
    assert s.database_pool_mode is None and s.database_direct_url is None and s.session_database_url == DIRECT


def test_session_mode_with_a_direct_url_keeps_the_cache_and_listens_on_the_direct_url() -> None:
    s = settings(database_url=POOLER, database_direct_url=DIRECT, database_pool_mode="session")
    assert not s.transaction_pooling
    assert asyncpg_options(s.transaction_pooling) == {"server_settings": SESSION_SETTINGS}
    assert s.session_database_url == DIRECT
