"""GET /openapi.json: a valid OpenAPI 3.1 document that describes every API route the app
serves, whose request schemas accept and refuse what validation does, and which the real
service honours: schemathesis (property-based, from the document alone) finds no 5xx
and no answer that the document does not describe.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from devtools.serverthread import ServerThread
from service.api.plumbing import openapi_doc as openapi
from service.app import routes
from service.domain.errors import ValidationFailed
from service.domain.schemas import validate_job_create
from tests.conftest import Service, fresh_database, run_service

ST = Path(sys.executable).with_name("st")
# No 5xx, and every status code, content type, header and body as the document says.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def test_the_document_is_valid_openapi_3_1(service: Service) -> None:
    answer = httpx.get(service.url + "/openapi.json", timeout=10)
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_api_route_is_documented() -> None:
    assert openapi.undocumented(routes()) == []


def test_the_job_api_receiver_facade_and_operations_are_all_there(service: Service) -> None:
    doc = httpx.get(service.url + "/openapi.json", timeout=10).json()
    operations = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert {("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/{job_id}/events"),
            ("post", "/webhooks/wavespeed/{job_id}"), ("post", "/api/v3/wavespeed-ai/flux-dev-lora"),
            ("post", "/api/v3/wavespeed-ai/flux-krea-dev-lora"), ("get", "/api/v3/predictions/{job_id}/result"),
            ("get", "/metrics"), ("get", "/healthz")} <= operations
    assert not any(path == "/" or path.startswith("/login") for path in doc["paths"])  # the HTML pages are not API


def test_a_document_only_lists_what_the_app_serves() -> None:
    health_only = [r for r in routes() if getattr(r, "path", "") in ("/healthz", "/readyz")]
    assert set(openapi.build(health_only)["paths"]) == {"/healthz", "/readyz"}


def _body_validator() -> OAS31Validator:
    """The document's own schema for POST /v1/jobs bodies, its $refs resolved in place."""
    doc = openapi.build(routes())
    schema = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return OAS31Validator({**schema, "components": doc["components"]})


BODIES: list[tuple[dict[str, Any], bool]] = [
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox"}}, True),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox", "size": "512*768", "num_images": 4,
                                                       "loras": [{"path": "a/b", "scale": 1.0}] * 4},
      "metadata": {"user": "u1"}, "callback_url": "https://backend.example/hook"}, True),
    ({"model": "wavespeed-ai/flux-krea-dev-lora",
      "input": {"prompt": "a fox", "loras": [{"path": "a", "scale": 1}] * 3}},
     True),
    # Krea takes at most 3 LoRAs and has no num_images: each schema is its own model's table.
    ({"model": "wavespeed-ai/flux-krea-dev-lora",
      "input": {"prompt": "a fox", "loras": [{"path": "a", "scale": 1}] * 4}},
     False),
    ({"model": "wavespeed-ai/flux-krea-dev-lora", "input": {"prompt": "a fox", "num_images": 2}}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox", "strength": 1.5}}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox", "size": "4096*4096"}}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox", "typo": 1}}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": ""}}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox", "mask_image": "http://a/m.png"}}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox"}, "callback_url": "ftp://x"}, False),
    ({"model": "wavespeed-ai/flux-dev-lora", "input": {"prompt": "a fox"},
      "metadata": {f"k{n}": "v" for n in range(17)}}, False),
    ({"model": "stability/sdxl", "input": {"prompt": "a fox"}}, False),
]


@pytest.mark.parametrize(("body", "valid"), BODIES)
def test_the_body_schema_and_validation_agree(body: dict[str, Any], valid: bool) -> None:
    errors = list(_body_validator().iter_errors(body))
    try:
        validate_job_create(body)
        accepted = True
    except ValidationFailed:
        accepted = False
    assert accepted == valid
    assert (not errors) == valid, [e.message for e in errors]


# --------------------------------------------------------------------------- schemathesis


@contextlib.contextmanager
def outbound_http_kept_on_loopback() -> Iterator[None]:
    """While a service starts, point its HTTP client's proxy at a closed loopback port.

    Schemathesis makes up callback URLs (``http://a.b/…``) and the workers would POST to
    them: through a proxy that refuses at once, no name is ever resolved and nothing
    leaves the machine, while loopback (the simulator, S3) stays direct. httpx reads the
    proxy settings when the client is created, so the environment is restored right after.
    """
    saved = {name: os.environ.get(name) for name in ("ALL_PROXY", "NO_PROXY")}
    os.environ["ALL_PROXY"] = "http://127.0.0.1:9"
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@pytest.fixture
def fuzzed(postgres_server: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[Service]:
    """A service of its own (its own database, workers on, short sync holds) for
    schemathesis to fill with whatever jobs it makes up."""
    with fresh_database(postgres_server) as url, contextlib.ExitStack() as stack:
        with outbound_http_kept_on_loopback():
            svc = stack.enter_context(run_service(url, s3_endpoint, simulator.url, facade_sync_timeout_seconds=2.0))
        yield svc


@pytest.mark.slow
@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None,
                    reason="schemathesis is not installed (pip install -e '.[dev]')")
def test_schemathesis_finds_no_server_error_and_every_answer_conforms(fuzzed: Service, tmp_path: Path) -> None:
    key = fuzzed.new_key()
    command = [
        str(ST) if ST.exists() else "st", "run", fuzzed.url + "/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "5",
        # Bounded: the whole run stops starting new cases after this many seconds, and a
        # single request may hold at most ?wait=60 (plus slack).
        "--max-time", "60",
        "--request-timeout", "70",
        "--workers", "1",
        "--seed", "6",
        "--generation-database", "none",
        "--no-color",
    ]
    # In a scratch directory: schemathesis keeps a cache of past failures (.schemathesis/)
    # in its working directory, and replays them; each run here starts clean.
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    # Every documented operation was exercised (schemathesis leaves out the one serving
    # the document it is reading).
    tested = re.search(r"Tested:\s+(\d+)", output)
    documented = sum(len(item) for item in httpx.get(fuzzed.url + "/openapi.json").json()["paths"].values())
    assert tested is not None and int(tested.group(1)) >= documented - 1, output[-3000:]
    print(output[output.find("SUMMARY"):] if "SUMMARY" in output else output[-2000:])


@pytest.mark.slow
@pytest.mark.skipif(not ST.exists() and shutil.which("st") is None,
                    reason="schemathesis is not installed (pip install -e '.[dev]')")
def test_schemathesis_fuzzes_path_parameters_without_a_server_error(fuzzed: Service, tmp_path: Path) -> None:
    """Every operation with a path parameter, with more examples and NUL allowed in the
    generated strings: `/v1/jobs/%00` and its kind used to reach Postgres as a 500."""
    key = fuzzed.new_key()
    command = [
        str(ST) if ST.exists() else "st", "run", fuzzed.url + "/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--checks", CHECKS,
        "--include-path-regex", r"\{",
        "--phases", "coverage,fuzzing",
        "--max-examples", "40",
        "--generation-allow-x00", "true",
        "--max-time", "30",
        "--request-timeout", "70",
        "--workers", "1",
        "--seed", "9",
        "--generation-database", "none",
        "--no-color",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    tested = re.search(r"Tested:\s+(\d+)", output)
    with_params = sum(len(item) for path, item in httpx.get(fuzzed.url + "/openapi.json").json()["paths"].items()
                      if "{" in path)
    assert tested is not None and int(tested.group(1)) >= with_params, output[-3000:]
