"""deploy/kubernetes (a kustomize base and an example overlay): `kubectl kustomize` renders
both, kubernetes-validate accepts every rendered object in strict mode (no unknown field)
for the oldest and the newest Kubernetes this kit is written for, and the objects hold
what the contract asks: serve and worker Deployments probed on /healthz and /readyz, the
migrate Job, the Service, PodDisruptionBudgets, workers scaled on the queue's depth, a
termination grace longer than SHUTDOWN_GRACE_SECONDS, requests and limits, a non-root
read-only security context, NetworkPolicies. No custom resource is used: the autoscaler is
a plain HPA on an external metric, so every object has a schema to be checked against."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.settings import Settings
from tests.unit.deploy_tools import ROOT, kubectl, venv_tool

KUSTOMIZATIONS = ["deploy/kubernetes/base", "deploy/kubernetes/overlays/example"]
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
LIBRARY_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FORWARDED_ALLOW_IPS"}
_rendered: dict[str, str] = {}


def render(path: str) -> str:
    if path not in _rendered:
        done = subprocess.run([str(kubectl()), "kustomize", str(ROOT / path)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        _rendered[path] = done.stdout
    return _rendered[path]


def objects(path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(path)) if doc]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    tool = venv_tool("kubernetes-validate", "kubernetes-validate")
    return subprocess.run([str(tool), "--strict", "-k", version, str(path)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kubernetes_validate_accepts_every_rendered_object(tmp_path: Path, path: str, version: str) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(path))
    done = validate(rendered, version)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.findall(r"passed for resource (\S+)", done.stdout)
    assert len(passed) == len(objects(path)), done.stdout


def test_kubernetes_validate_refuses_a_wrong_field(tmp_path: Path) -> None:
    broken = tmp_path / "rendered.yaml"
    broken.write_text(render(KUSTOMIZATIONS[0]).replace("terminationGracePeriodSeconds: 45",
                                                        "terminationGracePeriodSecond: 45", 1))
    done = validate(broken, KUBERNETES_VERSIONS[-1])
    assert done.returncode != 0 and "terminationGracePeriodSecond" in done.stdout + done.stderr


def pods(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod templates: serve, worker, migrate."""
    return {
        "serve": one(objs, "Deployment", "wavespeed-jobs-serve")["spec"]["template"],
        "worker": one(objs, "Deployment", "wavespeed-jobs-worker")["spec"]["template"],
        "migrate": one(objs, "Job", "wavespeed-jobs-migrate")["spec"]["template"],
    }


def settings_values(objs: list[dict[str, Any]]) -> dict[str, str]:
    config = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("wavespeed-jobs")]
    assert len(config) == 1
    return dict(config[0]["data"])


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_serve_and_worker_are_probed_on_healthz_and_readyz(path: str) -> None:
    for name in ("serve", "worker"):
        container = pods(objects(path))[name]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        port = container["readinessProbe"]["httpGet"]["port"]
        assert port in {p["name"] for p in container["ports"]}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_termination_grace_is_longer_than_the_services_own(path: str) -> None:
    objs = objects(path)
    grace = float(settings_values(objs).get("SHUTDOWN_GRACE_SECONDS", Settings.model_fields[
        "shutdown_grace_seconds"].default))
    for name in ("serve", "worker"):
        spec = pods(objs)[name]["spec"]
        pause = sum(int(word) for word in spec["containers"][0].get("lifecycle", {}).get("preStop", {})
                    .get("exec", {}).get("command", [])[1:])
        # uvicorn's own graceful wait is SHUTDOWN_GRACE_SECONDS + 5 (service/cli/serve.py).
        assert spec["terminationGracePeriodSeconds"] > pause + grace + 5, name


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_container_has_requests_limits_and_a_non_root_read_only_context(path: str) -> None:
    user = int(next(line.split()[1].split(":")[0] for line in (ROOT / "Dockerfile").read_text().splitlines()
                    if line.startswith("USER ")))
    for name, pod in pods(objects(path)).items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == user, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["serviceAccountName"] == "wavespeed-jobs"
        for container in spec["containers"]:
            assert set(container["resources"]) == {"requests", "limits"}, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_command_is_one_the_cli_accepts(path: str) -> None:
    for name, pod in pods(objects(path)).items():
        args = pod["spec"]["containers"][0]["args"]
        assert args[0] == name
        build_parser().parse_args(args)  # exits (fails the test) on a wrong command or flag
    serve = pods(objects(path))["serve"]["spec"]["containers"][0]["args"]
    assert "--no-workers" in serve


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_service_pdbs_and_policies_select_the_pods_they_mean(path: str) -> None:
    objs = objects(path)
    labels = {name: pod["metadata"]["labels"] for name, pod in pods(objs).items()}

    def selects(selector: dict[str, str]) -> set[str]:
        return {name for name, have in labels.items() if selector.items() <= have.items()}

    assert selects(one(objs, "Service", "wavespeed-jobs")["spec"]["selector"]) == {"serve"}
    assert selects(one(objs, "PodDisruptionBudget", "wavespeed-jobs-serve")["spec"]["selector"]["matchLabels"]) == {
        "serve"}
    assert selects(one(objs, "PodDisruptionBudget", "wavespeed-jobs-worker")["spec"]["selector"][
        "matchLabels"]) == {"worker"}
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    covered = {name for p in policies if "Ingress" in p["spec"]["policyTypes"]
               for name in selects(p["spec"]["podSelector"]["matchLabels"])}
    assert covered == {"serve", "worker"}
    egress = one(objs, "NetworkPolicy", "wavespeed-jobs-egress")
    assert selects(egress["spec"]["podSelector"]["matchLabels"]) == {"serve", "worker", "migrate"}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_workers_scale_on_the_queue_depth_the_service_exports(path: str) -> None:
    objs = objects(path)
    hpa = one(objs, "HorizontalPodAutoscaler", "wavespeed-jobs-worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "wavespeed-jobs-worker"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == "wavespeed_jobs_work_due"
    adapter = yaml.safe_load((ROOT / "deploy" / "prometheus" / "adapter-rules.yaml").read_text())
    assert [rule["name"]["as"] for rule in adapter["externalRules"]] == ["wavespeed_jobs_work_due"]


def test_the_overlay_sets_only_variables_the_service_reads() -> None:
    objs = objects(KUSTOMIZATIONS[1])
    known = {field.upper() for field in Settings.model_fields} | LIBRARY_VARIABLES
    secret = [o for o in objs if o["kind"] == "Secret"]
    assert len(secret) == 1
    assert set(settings_values(objs)) | set(secret[0]["data"]) <= known
    # METRICS_TOKEN too: /metrics is behind the token Prometheus sends (deploy/prometheus/scrape.yaml).
    assert {"DATABASE_URL", "WAVESPEED_API_KEY", "SECRETS_ENCRYPTION_KEY", "METRICS_TOKEN"} <= set(secret[0]["data"])
    for pod in pods(objs).values():
        refs = [ref for source in pod["spec"]["containers"][0]["envFrom"] for ref in source.values()]
        assert {ref["name"] for ref in refs} == {settings_values_name(objs), secret[0]["metadata"]["name"]}


def settings_values_name(objs: list[dict[str, Any]]) -> str:
    return str(next(o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"))


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_egress_rule_names_where_it_may_go(path: str) -> None:
    # An egress rule without `to` opens its ports towards every address, in the cluster and
    # outside it: the database's ports were such a rule once.
    policies = [o for o in objects(path) if o["kind"] == "NetworkPolicy"]
    assert [(p["metadata"]["name"], rule.get("ports")) for p in policies
            for rule in p["spec"].get("egress", []) if not rule.get("to")] == []


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_only_the_database_policy_opens_the_database_ports_for_every_pod(path: str) -> None:
    objs = objects(path)
    labels = {name: pod["metadata"]["labels"] for name, pod in pods(objs).items()}
    database = one(objs, "NetworkPolicy", "wavespeed-jobs-egress-database")
    selector = database["spec"]["podSelector"]["matchLabels"]
    assert {name for name, have in labels.items() if selector.items() <= have.items()} == {
        "serve", "worker", "migrate"}
    (rule,) = database["spec"]["egress"]
    assert {p["port"] for p in rule["ports"]} == {5432, 6432}
    assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "databases"}}}]
    others = [p for p in objs if p["kind"] == "NetworkPolicy" and p is not database]
    assert [p["metadata"]["name"] for p in others for rule in p["spec"].get("egress", [])
            for port in rule.get("ports", []) if port["port"] in (5432, 6432)] == []
