"""deploy/grafana/dashboard.json: every panel's PromQL parses (promtool checks them as
recording rules of a generated rule file, with Grafana's variables filled in), each stage
has its row, and every panel reads the datasource variable. The prometheus-adapter rule of
the worker autoscaler is checked the same way. tests/integration/test_deploy_scrape.py
checks that the metric names they use appear in a real scrape."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.deploy_tools import ROOT, promtool

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
ADAPTER = ROOT / "deploy" / "prometheus" / "adapter-rules.yaml"
STAGES = ["Admission", "Upstream", "Receiver", "Storer", "Callbacks", "Queue depth", "Budgets"]
# Grafana's variables, as a scrape of the kit's own job would see them.
VARIABLES = {"$__rate_interval": "5m", "$job": "wavespeed-jobs"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> dict[str, str]:
    """Every panel query (by panel id and refId) and the adapter's, variables filled in."""
    out = {}
    for panel in panels():
        for target in panel["targets"]:
            out[f"dashboard:panel_{panel['id']}_{target['refId']}"] = fill(target["expr"])
    for n, rule in enumerate(yaml.safe_load(ADAPTER.read_text())["externalRules"]):
        query = rule["metricsQuery"].replace("<<.Series>>", rule["name"]["as"])
        out[f"adapter:rule_{n}"] = query.replace("<<.LabelMatchers>>", 'namespace="wavespeed-jobs"')
    return out


def fill(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown variable in {expr}"
    return expr


def check_rules(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": name, "expr": expr}
                                                        for name, expr in exprs.items()]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return subprocess.run([str(promtool()), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)


def test_promtool_parses_every_query_of_the_dashboard_and_the_adapter(tmp_path: Path) -> None:
    exprs = queries()
    assert len(exprs) > 30
    done = check_rules(exprs, tmp_path)
    assert done.returncode == 0 and f"SUCCESS: {len(exprs)} rules found" in done.stdout, done.stdout + done.stderr


def test_the_query_check_fails_on_a_broken_query(tmp_path: Path) -> None:
    done = check_rules({"dashboard:broken": "sum by (le (rate(wavespeed_jobs_jobs[5m]))"}, tmp_path)
    assert done.returncode != 0 and "dashboard:broken" in done.stdout + done.stderr


def test_each_stage_has_its_row_of_panels() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    for stage in STAGES:
        assert any(title.startswith(stage) for title in rows), stage
    # Every row has panels under it.
    kinds = [p["type"] for p in dashboard()["panels"]]
    assert all(kinds[i + 1] != "row" for i, kind in enumerate(kinds[:-1]) if kind == "row") and kinds[-1] != "row"


def test_panels_have_unique_ids_a_description_and_the_datasource_variable() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["description"] and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert 'job="$job"' in target["expr"], (panel["title"], target["expr"])


def metric_names(expr: str) -> set[str]:
    """The metric names a query reads (the product's, the process collector's, `up`)."""
    names = set(re.findall(r"\b((?:wavespeed_jobs|process|python)_[a-z0-9_]+)\b", expr))
    return names | ({"up"} if re.search(r"\bup\s*\{", expr) else set())


def test_every_query_names_a_metric() -> None:
    for name, expr in queries().items():
        assert metric_names(expr), (name, expr)
