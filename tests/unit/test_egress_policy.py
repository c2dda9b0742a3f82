"""The egress layer's pure rules: which addresses are refused, which URL shapes, and
what the first bytes of an output say it is."""

from __future__ import annotations

import pytest

from service.clients.egress import address_problem, url_shape_problem
from service.domain.image_types import content_type_of_key, sniff

REFUSED = {
    "127.0.0.1": "loopback",
    "127.9.9.9": "loopback",
    "::1": "loopback",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::127.0.0.1": "loopback",  # IPv4-compatible (deprecated form)
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.0.1": "private",
    "fd00::1": "private",  # unique local
    "169.254.169.254": "link-local",  # cloud metadata
    "fe80::1%eth0": "link-local",  # with a zone id
    "100.64.0.1": "private",  # CGNAT
    "100.100.100.200": "private",  # Alibaba Cloud metadata, inside CGNAT
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "240.0.0.1": "reserved",
    "192.0.2.10": "private",  # documentation range: not global
    "fec0::1": "site-local",
    "2002:7f00:1::1": "loopback",  # 6to4 carrying 127.0.0.1
    "2002:a00:1::1": "private",  # 6to4 carrying 10.0.0.1
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 carrying 169.254.169.254
    "64:ff9b:1::a00:1": "private",  # local-use NAT64 carrying 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
}
ALLOWED = ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "word"), REFUSED.items())
def test_non_global_addresses_are_refused_with_their_reason(address: str, word: str) -> None:
    problem = address_problem(address)
    assert problem is not None and word in problem


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_and_forms_embedding_them_are_allowed(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize("url", ["http://h:99999/", "http://h:0/", "http://h:-1/", "ftp://h/", "http:///x",
                                 "http://[::1/", "javascript:alert(1)"])
def test_bad_url_shapes_are_named_not_raised(url: str) -> None:
    assert url_shape_problem(url)


@pytest.mark.parametrize("url", ["http://h/", "https://h:443/a?b=c", "http://h:65535/"])
def test_good_url_shapes_pass(url: str) -> None:
    assert url_shape_problem(url) is None


@pytest.mark.parametrize(("head", "expected"), [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", "image/png"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"<html><script>", None),
    (b"GIF89a\x01\x00\x01\x00", None),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    (b"", None),
])
def test_only_jpeg_png_and_webp_are_recognised(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


def test_presigned_content_type_follows_the_key() -> None:
    assert content_type_of_key("outputs/j/0.jpeg") == "image/jpeg"
    assert content_type_of_key("outputs/j/0.thumb.webp") == "image/webp"
    assert content_type_of_key("outputs/j/0.html") == "application/octet-stream"
