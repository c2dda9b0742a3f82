"""deploy/compose.yaml (one host) is valid Compose, checked with check-jsonschema's vendored
Compose specification schema, and holds what one host needs: Postgres and MinIO with
health checks, a one-shot `migrate` that serve and worker wait for, both of those with
health checks on /readyz, a stop grace longer than SHUTDOWN_GRACE_SECONDS, and only
variables the service knows."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.unit.deploy_tools import ROOT, venv_tool

COMPOSE = ROOT / "deploy" / "compose.yaml"
APP_SERVICES = ("migrate", "serve", "worker")
# Read by boto3 and uvicorn themselves, not by Settings.
LIBRARY_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FORWARDED_ALLOW_IPS"}


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    tool = venv_tool("check-jsonschema", "check-jsonschema")
    return subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the x-app anchor and merge keys
    return loaded


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    done = check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_refuses_an_invalid_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    restart: \"no\"\n", "    restart: \"no\"\n    replicas: two\n"))
    done = check_compose(broken)
    assert done.returncode != 0 and "replicas" in done.stdout + done.stderr


def test_one_host_runs_postgres_s3_a_one_shot_migrate_serve_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "minio", *APP_SERVICES}
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"
    for name in ("serve", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["command"][:3] == ["worker", "--port", "9000"]
    assert "--no-workers" in services["serve"]["command"]


def test_only_serve_publishes_a_port_and_only_on_the_hosts_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["serve"]["ports"] == ["127.0.0.1:8000:8000"]
    assert [name for name, service in services.items() if "ports" in service] == ["serve"]


@pytest.mark.parametrize("name", ["postgres", "minio", "serve", "worker"])
def test_every_long_running_service_has_a_health_check(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name]["healthcheck"]["test"]
    assert check[0] == "CMD"
    if name in ("serve", "worker"):
        assert "/readyz" in " ".join(check)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_app_runs_locked_down_with_a_stop_grace_longer_than_its_own(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    grace = float(service["environment"]["SHUTDOWN_GRACE_SECONDS"])
    assert seconds(service["stop_grace_period"]) > grace


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_variable_given_to_the_app_is_one_it_reads(compose: dict[str, Any], name: str) -> None:
    known = {field.upper() for field in Settings.model_fields} | LIBRARY_VARIABLES
    assert set(compose["services"][name]["environment"]) - known == set()


def test_every_variable_the_compose_file_needs_is_in_the_example_env() -> None:
    needed = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    example = {line.split("=")[0] for line in (ROOT / "deploy" / "example.env").read_text().splitlines()
               if line and not line.startswith("#")}
    assert needed == example


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


@pytest.mark.parametrize("name", ["serve", "worker"])
def test_metrics_needs_the_token_a_compose_file_cannot_start_without(compose: dict[str, Any], name: str) -> None:
    # serve's port is behind the TLS proxy, which would show /metrics to anyone without it.
    assert compose["services"][name]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:?set METRICS_TOKEN in .env}"
