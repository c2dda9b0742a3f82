"""deploy/prometheus/alerts.yaml, checked by Prometheus' own tool: `promtool check rules`
accepts it, `promtool test rules` runs alerts_test.yaml, in which every alert fires in one
scenario and stays quiet in another, and every alert's runbook line exists in
docs/operations.md. (tests/integration/test_deploy_scrape.py checks the metric names
against a real scrape, and `promtool check metrics` on it.)

promtool comes from Debian's `prometheus` package, unpacked without its server by .ci/run
into .tools/bin (tests/unit/deploy_tools.py finds it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.unit.deploy_tools import ROOT, promtool

PROMETHEUS = ROOT / "deploy" / "prometheus"
OPERATIONS = ROOT / "docs" / "operations.md"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_tests() -> list[dict[str, Any]]:
    return [case for test in yaml.safe_load((PROMETHEUS / "alerts_test.yaml").read_text())["tests"]
            for case in test["alert_rule_test"]]


def run(tool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


def test_promtool_accepts_the_alert_rules() -> None:
    done = run(promtool(), "check", "rules", "alerts.yaml")
    assert done.returncode == 0 and f"SUCCESS: {len(alerts())} rules found" in done.stdout, done.stdout + done.stderr


def test_the_alert_unit_tests_pass() -> None:
    done = run(promtool(), "test", "rules", "alerts_test.yaml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("name", [rule["alert"] for rule in alerts()])
def test_every_alert_is_tested_firing_and_quiet(name: str) -> None:
    cases = [case for case in alert_tests() if case["alertname"] == name]
    assert any(case["exp_alerts"] for case in cases), f"{name}: no test where it fires"
    assert any(not case["exp_alerts"] for case in cases), f"{name}: no test where it stays quiet"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_runbook_entry_and_a_severity(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    headings = re.findall(r"^### (\S+)$", OPERATIONS.read_text(), flags=re.M)
    assert name in headings, f"docs/operations.md has no '### {name}' runbook entry"


def test_a_broken_expectation_fails_the_alert_tests(tmp_path: Path) -> None:
    """The unit tests compare labels and annotations exactly: a wrong one fails."""
    (tmp_path / "alerts.yaml").write_text((PROMETHEUS / "alerts.yaml").read_text())
    broken = (PROMETHEUS / "alerts_test.yaml").read_text().replace("acme has used 95%", "acme has used 94%")
    (tmp_path / "alerts_test.yaml").write_text(broken)
    done = subprocess.run([str(promtool()), "test", "rules", "alerts_test.yaml"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode != 0 and "acme has used 95%" in done.stdout + done.stderr


def test_the_deadline_alert_follows_the_default_job_deadline() -> None:
    (rule,) = [r for r in alerts() if r["alert"] == "WavespeedJobsWorkOlderThanDeadline"]
    threshold = float(rule["expr"].rsplit(">", 1)[1])
    assert threshold == Settings.model_fields["job_deadline_seconds"].default
