"""Presigned URLs are reused while most of their life remains (signing dominated history
pages), and re-signed before a caller could receive one close to expiry."""

from __future__ import annotations

import pytest

from service.clients import storage
from service.clients.storage import Storage


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Storage:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    return Storage(bucket="b", endpoint_url="http://127.0.0.1:9", region="us-east-1")


def test_a_url_is_reused_within_a_sixth_of_its_life_and_renewed_after(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
    signed: list[str] = []
    real = store._client.generate_presigned_url

    def counting(*args: object, **kwargs: object) -> str:
        url: str = real(*args, **kwargs)
        signed.append(url)
        return url

    monkeypatch.setattr(store._client, "generate_presigned_url", counting)
    first = store.presign("outputs/j/0.png", expires=600)
    clock[0] += 99
    assert store.presign("outputs/j/0.png", expires=600) == first
    assert len(signed) == 1
    clock[0] += 2  # 101 s > 600 / 6: signed anew
    store.presign("outputs/j/0.png", expires=600)
    assert len(signed) == 2


def test_different_keys_and_lifetimes_get_their_own_urls(store: Storage) -> None:
    a = store.presign("outputs/j/0.png", expires=600)
    assert store.presign("outputs/j/1.png", expires=600) != a
    assert "X-Amz-Expires=7200" in store.presign("outputs/j/0.png", expires=7200)
