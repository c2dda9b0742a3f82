"""The deploy kit against a real /metrics scrape of the running service: `promtool check
metrics` accepts it, and every metric name that the alert rules, the dashboard's queries
and the worker autoscaler read appears in it (names Prometheus adds itself, `up`, aside).

The scrape comes from a service of its own with an owner that has a budget, so the owner
series are there (with METRICS_PER_OWNER=true where that setting exists: the owner-budget
alert and the budget panels read series that exist with it)."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest
import yaml

from devtools.serverthread import ServerThread
from service.settings import Settings
from tests.conftest import run_service
from tests.integration.test_budget import set_owner
from tests.unit.deploy_tools import ROOT, promtool
from tests.unit.test_deploy_dashboard import metric_names, queries

SYNTHETIC = {"up"}  # added by Prometheus to every target, never in a scrape


@pytest.fixture(scope="module")
def scrape(database_url: str, s3_endpoint: str, simulator: ServerThread) -> Iterator[str]:
    per_owner = {"metrics_per_owner": True} if "metrics_per_owner" in Settings.model_fields else {}
    with run_service(database_url, s3_endpoint, simulator.url, run_workers=False, **per_owner) as svc:
        owner = f"owner_{uuid.uuid4().hex[:8]}"
        svc.new_key(owner)
        set_owner(database_url, owner, monthly_budget_usd=10)
        assert httpx.get(svc.url + "/readyz", timeout=10).status_code == 200  # sets wavespeed_jobs_ready
        answer = httpx.get(svc.url + "/metrics", timeout=10)
        assert answer.status_code == 200
        yield answer.text


def exposed(text: str) -> set[str]:
    """Every name in the scrape: samples, and families declared by HELP/TYPE (a labelled
    counter with no event yet, such as S3 errors, has no sample but is declared)."""
    declared = set(re.findall(r"^# (?:HELP|TYPE) (\S+)", text, flags=re.M))
    histograms = re.findall(r"^# TYPE (\S+) histogram$", text, flags=re.M)
    series = {f"{name}_{suffix}" for name in histograms for suffix in ("bucket", "count", "sum")}
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, flags=re.M))
    return declared | series | samples


def test_promtool_check_metrics_accepts_the_scrape(scrape: str) -> None:
    done = subprocess.run([str(promtool()), "check", "metrics"], input=scrape, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


@pytest.mark.parametrize(("source", "exprs"), [("alerts.yaml", alert_exprs()), ("dashboard", queries())],
                         ids=["alerts", "dashboard-and-autoscaler"])
def test_every_metric_the_kit_reads_is_in_a_real_scrape(scrape: str, source: str, exprs: dict[str, str]) -> None:
    names = exposed(scrape)
    missing = {name: sorted(metric_names(expr) - names - SYNTHETIC) for name, expr in exprs.items()}
    assert {name: m for name, m in missing.items() if m} == {}, source
    assert all(metric_names(expr) for expr in exprs.values())


def test_the_owner_series_the_budget_alert_reads_have_samples(scrape: str) -> None:
    for family in ("wavespeed_jobs_owner_spent_usd", "wavespeed_jobs_owner_reserved_usd",
                   "wavespeed_jobs_owner_budget_usd"):
        assert re.search(rf"^{family}{{owner=\"owner_\w+\"}} ", scrape, flags=re.M), family


def test_a_misspelt_name_is_not_taken_for_an_exposed_one(scrape: str) -> None:
    names = exposed(scrape)
    assert "wavespeed_jobs_provider_errors_total" in names
    assert "wavespeed_jobs_provider_errors" not in names  # the counter without its _total
    assert metric_names("rate(wavespeed_jobs_provider_errors[5m])") - names == {"wavespeed_jobs_provider_errors"}
