"""The provider's list proves a task absent only by its own figures, never because a
page came back short (reconciler.list_complete)."""

from __future__ import annotations

import pytest

from service.work.reconciler import list_complete


@pytest.mark.parametrize(("data", "page_items", "seen", "verdict"), [
    # A total: complete once every counted task was seen, never before.
    ({"total": 60, "page_size": 100}, 50, 50, None),  # capped at 50: read on
    ({"total": 60, "page_size": 100}, 0, 50, False),  # ran dry short of the total: unproven
    ({"total": 60, "page_size": 100}, 10, 60, True),
    ({"total": 0, "page_size": 100}, 0, 0, True),
    ({"total": 3}, 3, 3, True),
    # No total: a short page counts only against the page size the answer echoes.
    ({"page_size": 100}, 50, 50, True),
    ({"page_size": 100}, 100, 100, None),
    ({"page_size": 50}, 50, 50, False),  # paged otherwise than asked: cannot be judged
    ({"page_size": 50}, 20, 70, False),
    ({}, 50, 50, False),  # no figures at all: a short page proves nothing
    ({"total": "60"}, 10, 10, False),
    ({"total": True, "page_size": True}, 0, 0, False),
])
def test_completeness_comes_from_the_answers_own_figures(
    data: dict[str, object], page_items: int, seen: int, verdict: bool | None
) -> None:
    assert list_complete(data, page_items, seen) is verdict
