"""Fixtures the integration tests share (the session's real parts, Postgres, S3, the
simulator and the service, are in tests/conftest.py).

A module whose tests talk to a service of their own (other settings, a database of its
own) overrides ``api_service``; ``owner_key`` and ``api`` then follow it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Service, fresh_database
from tests.servers import WebhookCatcher


@pytest.fixture
def own_db(postgres_server: str) -> Iterator[str]:
    """A database of the test's own, migrated to head and dropped after: for tests whose
    claims, limits or counts would take or see other tests' jobs in the shared one."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def catcher() -> Iterator[WebhookCatcher]:
    """A backend's webhook endpoint on 127.0.0.1 that records every request it gets."""
    with WebhookCatcher() as running:
        yield running


@pytest.fixture
def api_service(service: Service) -> Service:
    """The service ``api`` talks to: the session's, unless the module overrides this."""
    return service


@pytest.fixture
def owner_key(api_service: Service) -> str:
    """A fresh owner's API key: each test sees only its own jobs."""
    return api_service.new_key()


@pytest.fixture
def api(api_service: Service, owner_key: str) -> Iterator[httpx.Client]:
    """The job API as the test's fresh owner (``owner_key``)."""
    with api_service.client(owner_key) as client:
        yield client
