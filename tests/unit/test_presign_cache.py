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
    real = store._presign

    def counting(*args: object, **kwargs: object) -> str:
        url: str = real(*args, **kwargs)
        signed.append(url)
        return url

    monkeypatch.setattr(store, "_presign", counting)
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


def test_the_url_is_the_one_botocore_would_sign(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Frozen:  # type: ignore[override]
            return cls(2026, 12, 2, 4, 30, 15, tzinfo=tz)

        @classmethod
        def utcnow(cls) -> Frozen:  # type: ignore[override]
            return cls(2026, 12, 2, 4, 30, 15)

    monkeypatch.setattr("service.clients.sigv4.dt.datetime", Frozen)
    monkeypatch.setattr("botocore.auth.datetime.datetime", Frozen)
    key = "outputs/job 01/0ü+.jpeg"
    ours = store.presign(key, expires=900)
    # The content type pinned by the key (docs/security.md) is signed as botocore signs it.
    theirs = store._client.generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": key, "ResponseContentType": "image/jpeg"}, ExpiresIn=900)
    assert ours == theirs
