"""deploy/prometheus/scrape.yaml, Prometheus's scrape job for the Kubernetes kit: promtool
accepts it, it sends METRICS_TOKEN as a bearer token (read from a file, so the token is in
no config), and its relabelling keeps exactly the pods whose annotations the base gives
(serve on 8000, workers on 9000; the migrate Job's pod has none).

Debian's promtool is built without Kubernetes discovery ("field kubernetes_sd_configs not
found"): the check swaps that block for one static target and checks the rest as written
(authorization, relabelling, the rule file); the discovery block itself is read here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy_tools import ROOT, promtool
from tests.unit.test_deploy_kubernetes import KUSTOMIZATIONS, objects, pods

PROMETHEUS = ROOT / "deploy" / "prometheus"


def scrape_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROMETHEUS / "scrape.yaml").read_text())
    return loaded


def the_job() -> dict[str, Any]:
    (job,) = scrape_config()["scrape_configs"]
    return dict(job)


def checkable_copy(tmp_path: Path, token: bool = True) -> Path:
    """scrape.yaml with static discovery, its token file in tmp_path (present or not), and
    the rule file beside it as in deploy/prometheus."""
    config = scrape_config()
    job = config["scrape_configs"][0]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["10.1.2.3:8000"]}]
    job["authorization"]["credentials_file"] = str(tmp_path / "METRICS_TOKEN")
    if token:
        (tmp_path / "METRICS_TOKEN").write_text("a-token-of-sixteen-or-more\n")
    (tmp_path / "alerts.yaml").write_text((PROMETHEUS / "alerts.yaml").read_text())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "prometheus.yml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool()), "check", "config", str(path)], capture_output=True, text=True,
                          timeout=120, cwd=path.parent)


def test_promtool_accepts_the_scrape_configuration(tmp_path: Path) -> None:
    done = check(checkable_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_checks_the_token_file_it_names(tmp_path: Path) -> None:
    done = check(checkable_copy(tmp_path, token=False))
    assert done.returncode != 0 and "METRICS_TOKEN" in done.stdout + done.stderr


def test_the_job_sends_metrics_token_as_a_bearer_token_from_a_file() -> None:
    job = the_job()
    assert job["job_name"] == "wavespeed-jobs"  # the alert rules' and the dashboard's job
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].endswith("/METRICS_TOKEN")
    assert "credentials" not in job["authorization"] and "bearer_token" not in job
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["wavespeed-jobs"]}}]


def kept(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str] | None:
    """(address, metrics path) the job's relabelling gives a pod at 10.1.2.3, or None when
    it drops it: the keep rules and the address and path rewrites, as Prometheus applies them."""
    meta = {"__address__": "10.1.2.3", "__metrics_path__": "/metrics"}
    for key, value in pod["metadata"].get("labels", {}).items():
        meta["__meta_kubernetes_pod_label_" + re.sub(r"\W", "_", key)] = value
    for key, value in pod["metadata"].get("annotations", {}).items():
        meta["__meta_kubernetes_pod_annotation_" + re.sub(r"\W", "_", key)] = value
    for rule in job["relabel_configs"]:
        value = ";".join(meta.get(label, "") for label in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action") == "keep":
            if not match:
                return None
        elif match:
            meta[rule["target_label"]] = match.expand(re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1")))
    return meta["__address__"], meta["__metrics_path__"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_job_scrapes_serve_and_worker_on_their_metrics_ports_and_not_migrate(path: str) -> None:
    job = the_job()
    found = {name: kept(job, pod) for name, pod in pods(objects(path)).items()}
    ports = {name: {p["containerPort"] for p in pod["spec"]["containers"][0].get("ports", [])}
             for name, pod in pods(objects(path)).items()}
    assert found == {"serve": ("10.1.2.3:8000", "/metrics"), "worker": ("10.1.2.3:9000", "/metrics"), "migrate": None}
    assert 8000 in ports["serve"] and 9000 in ports["worker"]
