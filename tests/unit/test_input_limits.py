"""Hostile input gets a bounded 4xx: depth limits, deduplicated and capped error lists,
signature headers refused before any HMAC, prices checked at start."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from service.api.plumbing.body import MAX_JSON_DEPTH, json_depth, parse_json
from service.domain import signing
from service.domain.errors import BadRequest, FieldError, SignatureInvalid, ValidationFailed
from service.settings import Settings

SECRET = "whsec_test_secret_0123456789"


def test_json_nested_a_thousand_deep_is_a_400_not_a_recursion_error() -> None:
    with pytest.raises(BadRequest):
        parse_json(b"[" * 1000 + b"]" * 1000)
    with pytest.raises(BadRequest):
        parse_json(b"[" * 100_000 + b"]" * 100_000)  # deep enough to break the parser itself


def test_json_up_to_the_depth_limit_is_read() -> None:
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_depth(json.loads(nested)) == MAX_JSON_DEPTH
    parse_json(nested)
    with pytest.raises(BadRequest):
        parse_json("[" + nested + "]")


def test_error_lists_are_deduplicated_and_capped_at_twenty() -> None:
    same = ValidationFailed([FieldError("status", "must be one of …")] * 65_000)
    assert same.fields == [FieldError("status", "must be one of …")]
    many = ValidationFailed([FieldError(f"metadata.k{i}", "bad") for i in range(1000)])
    assert len(many.fields) == 20 and many.fields[0]["loc"] == "metadata.k0"
    long = ValidationFailed([FieldError("x" * 100_000, "y" * 100_000)])
    assert len(long.fields[0]["loc"]) <= 200 and len(long.message) < 1000


def _headers(signature: str) -> dict[str, str]:
    return {"webhook-id": "evt_01", "webhook-timestamp": str(int(time.time())), "webhook-signature": signature}


def test_a_huge_signature_header_is_refused_before_any_hmac(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    real = signing.wavespeed_signature

    def counting(*args: object) -> str:
        computed.append("hmac")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(signing, "wavespeed_signature", counting)
    body = b'{"id":"task_01"}'
    huge = " ".join(["v3," + "0" * 64] * 300_000)  # about 20 MB
    with pytest.raises(SignatureInvalid, match="longer than"):
        signing.verify_wavespeed(SECRET, _headers(huge), body, now=time.time())
    six = " ".join(["v3," + "0" * 64] * 6)
    assert len(six) < signing.MAX_SIGNATURE_HEADER_BYTES
    with pytest.raises(SignatureInvalid, match="more than 5 entries"):
        signing.verify_wavespeed(SECRET, _headers(six), body, now=time.time())
    assert computed == []


def test_five_entries_with_one_valid_still_verify() -> None:
    body = b'{"id":"task_01"}'
    headers = _headers("")
    good = signing.wavespeed_signature(SECRET, "evt_01", headers["webhook-timestamp"], body)
    headers["webhook-signature"] = " ".join(["v3," + "0" * 64] * 4 + [good])
    assert signing.verify_wavespeed(SECRET, headers, body, now=time.time()) == "evt_01"


@pytest.mark.parametrize("price", ["abc", "NaN", "Infinity", "-0.01", "1e9", "0.00001", ""])
def test_a_bad_price_is_refused_at_start_naming_the_variable(price: str) -> None:
    with pytest.raises(ValidationError, match="price_flux_dev_lora_usd"):
        Settings(price_flux_dev_lora_usd=price)


@pytest.mark.parametrize("price", ["0", "0.015", " 0.0125 ", "12"])
def test_good_prices_are_kept(price: str) -> None:
    assert Settings(price_flux_krea_dev_lora_usd=price).price_usd("wavespeed-ai/flux-krea-dev-lora") == price.strip()


@pytest.mark.parametrize("hosts", ["a.com/x", "user@a.com", "a.com:80", ",", "bücher.de"])
def test_output_hosts_allowed_must_be_host_names(hosts: str) -> None:
    with pytest.raises(ValidationError, match="output_hosts_allowed"):
        Settings(output_hosts_allowed=hosts)


def test_output_hosts_allowed_are_suffixes() -> None:
    assert Settings(output_hosts_allowed="wavespeed.ai, .cloudfront.net").output_host_suffixes == [
        "wavespeed.ai", "cloudfront.net"]


@pytest.mark.parametrize(("name", "value"), [
    ("bulk_target_seconds", "-1"), ("bulk_target_seconds", "3601"), ("bulk_target_seconds", "nan"),
    ("bulk_pause_factor", "-0.5"), ("bulk_pause_factor", "101"), ("bulk_pause_factor", "nan"), ("bulk_batch_size", "0"),
    ("bulk_batch_size", "5001"), ("lifecycle_pause_factor", "-1"),
])
def test_a_bulk_or_pacing_setting_out_of_bounds_is_refused_at_start_naming_it(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_the_bulk_pace_defaults_spread_a_bulk_over_eight_seconds() -> None:
    settings = Settings()
    assert (settings.bulk_target_seconds, settings.bulk_pause_factor, settings.bulk_batch_size) == (8.0, 20.0, 1000)
