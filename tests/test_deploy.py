"""Deployment artefacts, checked offline and without Docker: the image's Dockerfile, compose.yaml,
the nginx proxy and the Kubernetes manifests.

The manifests are rendered with the real kustomize (`kustomize build` or `kubectl kustomize`) when
one is installed, else with the small renderer below, which covers exactly the kustomization
features used in deploy/k8s (and is compared with the real one whenever that is available).
Every rendered object is validated against the Kubernetes JSON schemas of kubernetes-validate
(strict: unknown fields fail), compose.yaml against the Compose Specification schema vendored in
tests/schemas/, and the settings they carry against the service's own Settings class.
"""

from __future__ import annotations

import copy
import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from pydantic import ValidationError
from sobot_panel.cli import build_parser
from sobot_panel.settings import Settings, describe_error

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"

OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]

# The secrets of CONTRACT.md: an operator must be able to fill every one of them from the template.
CONTRACT_SECRETS = {"PANEL_SECRET", "PANEL_SESSION_KEY", "PANEL_API_TOKEN", "PANEL_OPS_TOKEN"}
APP_UID = 10001
# The supervisor (`serve --workers N`) waits `grace + 5` s for its workers before killing them.
SUPERVISOR_MARGIN_S = 5.0
PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --- rendering --------------------------------------------------------------------------------


def _split_image(ref: str) -> tuple[str, str]:
    """`registry:5000/name:tag` -> (`registry:5000/name`, `:tag`); digests keep their `@`."""
    if "@" in ref:
        name, _, digest = ref.partition("@")
        return name, "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon:]
    return ref, ""


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch, as far as deploy/k8s uses it: maps merge (null deletes a key), lists
    of named items (containers, env, volumes) merge by name, any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    named = named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch])
    if named:
        merged_list = list(base)
        added = []
        for item in patch:
            index = next((i for i, old in enumerate(merged_list) if old["name"] == item["name"]), None)
            if index is None:
                added.append(copy.deepcopy(item))
            else:
                merged_list[index] = _merge(merged_list[index], item)
        return added + merged_list  # kustomize puts items the patch adds before the base's
    return copy.deepcopy(patch)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def render_builtin(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with the features deploy/k8s uses: resources, patches (by path,
    strategic merge or `$patch: delete`), namespace and images."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    supported = {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
    unsupported = set(kustomization) - supported
    assert not unsupported, f"{directory}: the built-in renderer does not know {sorted(unsupported)}"
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = directory / entry
        objects += render_builtin(target) if target.is_dir() else _load_yaml_docs(target)
    for patch_ref in kustomization.get("patches", []):
        assert set(patch_ref) == {"path"}, f"{directory}: only `patches: - path:` is supported"
        for patch in _load_yaml_docs(directory / patch_ref["path"]):
            index = next(
                i
                for i, obj in enumerate(objects)
                if (obj["kind"], obj["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            )
            if patch.get("$patch") == "delete":
                del objects[index]
            else:
                objects[index] = _merge(objects[index], patch)
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for obj in objects:
            pod = _pod_spec(obj)
            for container in [*(pod or {}).get("initContainers", []), *(pod or {}).get("containers", [])]:
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    tag = f":{image['newTag']}" if "newTag" in image else tag
                    tag = f"@{image['digest']}" if "digest" in image else tag
                    container["image"] = image.get("newName", name) + tag
    return objects


def _real_kustomize() -> list[str] | None:
    """`kustomize build` or `kubectl kustomize` (kustomize v4 or newer), when installed."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    exe = shutil.which("kubectl")
    if not exe:
        return None
    try:
        done = subprocess.run([exe, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
        version = str(json.loads(done.stdout).get("kustomizeVersion", ""))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    match = re.match(r"v?(\d+)\.", version)
    return [exe, "kustomize"] if match and int(match.group(1)) >= 4 else None


REAL_KUSTOMIZE = _real_kustomize()


def render_real(directory: Path) -> list[dict[str, Any]]:
    assert REAL_KUSTOMIZE is not None
    done = subprocess.run([*REAL_KUSTOMIZE, str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(REAL_KUSTOMIZE)} {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    render = render_real if REAL_KUSTOMIZE else render_builtin
    return {target: render(K8S / target) for target in TARGETS}


def _identity(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _panel(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "Deployment", "sobot-panel")


def _panel_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _panel(objects)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "panel")


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_overlays_exist() -> None:
    assert {"production", "demo"} <= set(OVERLAYS)


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_renderer_matches_kustomize(target: str) -> None:
    if REAL_KUSTOMIZE is None:
        pytest.skip("neither `kustomize` nor a `kubectl` with kustomize v4+ is installed: nothing to compare with")
    real = {_identity(o): o for o in render_real(K8S / target)}
    builtin = {_identity(o): o for o in render_builtin(K8S / target)}
    assert sorted(builtin) == sorted(real)
    for key, obj in real.items():
        assert builtin[key] == obj, f"{key} differs from kustomize's rendering"


# --- schemas ----------------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
# monitoring.coreos.com/v1 ServiceMonitor, the fields used here (the CRD prunes unknown fields
# silently; this schema rejects them so a typo fails here instead).
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}
# monitoring.coreos.com/v1 PrometheusRule, the fields used here.
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SCHEMA,
}
# The oldest and the newest Kubernetes that the installed kubernetes-validate knows.
K8S_VERSIONS = sorted({all_versions()[0], all_versions()[-1]})


def _validate_k8s(obj: dict[str, Any], version: str) -> None:
    crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd_schema is not None:
        jsonschema.validate(obj, crd_schema)
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        pytest.fail(f"{name} is invalid for Kubernetes {version}: {path}: {error.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_rendered_objects_match_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], target: str, version: str
) -> None:
    assert rendered[target], f"{target} renders nothing"
    for obj in rendered[target]:
        _validate_k8s(obj, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_secret_template_matches_the_kubernetes_schema(version: str) -> None:
    (secret,) = _load_yaml_docs(SECRET_EXAMPLE)
    _validate_k8s(secret, version)


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


# --- Kubernetes invariants --------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_labelled(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    for obj in rendered[target]:
        labels = obj["metadata"].get("labels", {})
        assert labels.get(PART_OF) == "sobot-panel", f"{obj['kind']}/{obj['metadata']['name']} lacks {PART_OF}"
        assert labels.get(NAME), f"{obj['kind']}/{obj['metadata']['name']} lacks {NAME}"
        if obj["metadata"]["name"].startswith("sobot-panel"):
            assert labels[NAME] == "sobot-panel"


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_locked_down(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    deployments = [o for o in rendered[target] if o["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("automountServiceAccountToken") is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["runAsNonRoot"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert not context["capabilities"].get("add")
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert context.get("privileged") is not True
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{container['name']} {kind}"
    pod = _panel(rendered[target])["spec"]["template"]["spec"]
    container = _panel_container(rendered[target])
    assert pod["securityContext"]["runAsUser"] == container["securityContext"]["runAsUser"] == APP_UID
    assert _dockerfile_uid() == APP_UID


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the panel container gets from its ConfigMap(s) and `env`."""
    container = _panel_container(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


@pytest.mark.parametrize("target", TARGETS)
def test_probes_ports_and_writable_dirs(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    container = _panel_container(rendered[target])
    ports = {port["name"]: port for port in container["ports"]}
    config = _config(rendered[target])
    assert set(ports) == {"http", "metrics"}
    assert ports["http"] == {"name": "http", "containerPort": int(config["PANEL_PORT"]), "protocol": "TCP"}
    assert ports["metrics"] == {
        "name": "metrics",
        "containerPort": int(config["PANEL_METRICS_PORT"]),
        "protocol": "TCP",
    }
    assert config["PANEL_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["port"] == "http"
    assert container["startupProbe"]["httpGet"]["path"] in {"/healthz", "/readyz"}
    # A read-only root: /tmp and the data dir (audit spool) must be emptyDir mounts.
    volumes = {v["name"]: v for v in _panel(rendered[target])["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for path in ("/tmp", config["PANEL_DATA_DIR"]):
        assert "emptyDir" in mounts[path], f"{path} is not a writable emptyDir"


def _sleep_seconds(command: list[str]) -> float:
    assert command[:2] == ["python", "-c"], "preStop must not need a sleep binary"
    compile(command[2], "<preStop>", "exec")
    match = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert match, command
    return float(match.group(1))


@pytest.mark.parametrize("target", TARGETS)
def test_shutdown_fits_in_the_grace_period(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    """preStop (the ingress stops routing) + websocket drain (+ the supervisor's margin) < SIGKILL."""
    pod = _panel(rendered[target])["spec"]["template"]["spec"]
    container = _panel_container(rendered[target])
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.workers >= 1
    pre_stop = _sleep_seconds(container["lifecycle"]["preStop"]["exec"]["command"])
    assert pre_stop >= 3
    margin = SUPERVISOR_MARGIN_S if args.workers > 1 else 0.0
    assert pod["terminationGracePeriodSeconds"] > pre_stop + args.grace + margin
    assert args.grace >= 10, "give open websockets time to be told to reconnect"


@pytest.mark.parametrize("target", TARGETS)
def test_objects_are_wired_together(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    objects = rendered[target]
    deployment = _panel(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in _panel_container(objects)["ports"]}

    service = _one(objects, "Service", "sobot-panel")
    assert service["spec"]["type"] == "ClusterIP"
    assert _matches(service["spec"]["selector"], pod_labels)
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    service_port = service_ports["http"]
    assert (service_port["name"], service_port["port"], service_port["targetPort"]) == ("http", 80, "http")
    assert {port["targetPort"] for port in service_ports.values()} <= port_names

    hpa = _one(objects, "HorizontalPodAutoscaler")
    target_ref = hpa["spec"]["scaleTargetRef"]
    assert (target_ref["kind"], target_ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; `kubectl apply` would reset it"

    pdb = _one(objects, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1

    policy = _one(objects, "NetworkPolicy")
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)

    for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert _matches(spread["labelSelector"]["matchLabels"], pod_labels)

    for source in _panel_container(objects)["envFrom"]:
        if "configMapRef" in source:
            _one(objects, "ConfigMap", source["configMapRef"]["name"])

    ingress = _one(objects, "Ingress")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"] == {"name": service_port["name"]}

    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    for monitor in monitors:
        assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        # Metrics on their own port, which the Ingress never routes (it routes `http` only, checked above).
        assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
        assert service_ports["metrics"]["targetPort"] == "metrics"


def test_secret_template_is_complete_and_never_applied(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (secret,) = _load_yaml_docs(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert CONTRACT_SECRETS | {"PANEL_REDIS_URL"} <= set(secret["stringData"])
    assert re.search(r"kubectl .*create secret generic", SECRET_EXAMPLE.read_text(encoding="utf-8"))
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text(encoding="utf-8")).get("resources", [])
        assert SECRET_EXAMPLE.name not in {Path(entry).name for entry in listed}, kustomization
    for target, objects in rendered.items():
        refs = {s["secretRef"]["name"] for s in _panel_container(objects)["envFrom"] if "secretRef" in s}
        assert refs == {secret["metadata"]["name"]}, target
        if target.endswith("production") or target == "base":
            assert not [o for o in objects if o["kind"] == "Secret"], f"{target} must not ship a Secret"


def _settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("PANEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def _settings_fields() -> set[str]:
    return {f"PANEL_{field.upper()}" for field in Settings.model_fields}


@pytest.mark.parametrize("target", TARGETS)
def test_manifest_settings_are_real_and_valid(
    rendered: dict[str, list[dict[str, Any]]], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered[target]
    env = _config(objects)
    for secret in [o for o in objects if o["kind"] == "Secret"] or _load_yaml_docs(SECRET_EXAMPLE):
        env.update(secret.get("stringData", {}))
    unknown = {name for name in env if name not in _settings_fields()}
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    if env.get("PANEL_TENANTS"):
        # The Secret's file is the operator's; the shipped example has its shape.
        env["PANEL_TENANTS"] = str(K8S / target / "tenants.example.toml")
    if env.get("PANEL_DEMO") != "1" and not env.get("PANEL_SYSNUM") and not env.get("PANEL_TENANTS"):
        # An unset sysNum must stop the pod with one clear line, not serve with a wrong one.
        with pytest.raises(ValidationError) as error:
            _settings_from_env(env, monkeypatch)
        assert "PANEL_SYSNUM" in describe_error(error.value)
        env["PANEL_SYSNUM"] = "1234567890"
    settings = _settings_from_env(env, monkeypatch)
    assert settings.redis_url, "every replica must share one Redis: set PANEL_REDIS_URL"
    assert not settings.session_key_generated, "PANEL_SESSION_KEY must be shared by every replica"
    assert settings.log_format == "json"
    assert settings.public_url and settings.public_url.startswith(("https://", "http://localhost"))


def test_ingress_keeps_websockets_open(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ingress = _one(rendered["overlays/production"], "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and hosts <= set(tls["hosts"]) and "panel.example.com" in hosts


def test_autoscaling(rendered: dict[str, list[dict[str, Any]]]) -> None:
    limits = {"base": (2, 20), "overlays/production": (3, 50)}
    for target, (low, high) in limits.items():
        hpa = _one(rendered[target], "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (low, high)
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _memory(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else float(quantity)


def test_production_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["overlays/production"]
    assert _one(objects, "Namespace")["metadata"]["name"] == "sobot-panel"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == "sobot-panel", f"{obj['kind']}/{obj['metadata']['name']}"
    image = _panel_container(objects)["image"]
    name, tag = _split_image(image)
    assert "/" in name, f"{image}: pin a registry"
    assert tag and tag not in {":latest", ":local"}, f"{image}: pin a version"
    base = _panel_container(rendered["base"])["resources"]
    prod = _panel_container(objects)["resources"]
    assert _cpu(prod["requests"]["cpu"]) > _cpu(base["requests"]["cpu"])
    assert _memory(prod["limits"]["memory"]) > _memory(base["limits"]["memory"])
    for kind in ("requests", "limits"):
        assert _cpu(prod[kind]["cpu"]) <= _cpu(prod["limits"]["cpu"])
        assert _memory(prod[kind]["memory"]) <= _memory(prod["limits"]["memory"])


def test_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policy = _one(rendered["overlays/production"], "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: [p["port"] for p in rule["ports"]]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    }
    # The ingress controller reaches the service port only, Prometheus the metrics port only.
    assert allowed == {"ingress-nginx": [8080], "monitoring": [9090]}
    egress = {(p["protocol"], p["port"]) for r in policy["spec"]["egress"] for p in r["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 6380), ("TCP", 26379), ("TCP", 443)} <= egress


def test_demo_overlay_runs_without_the_prometheus_operator(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["overlays/demo"]
    assert not [o for o in objects if o["kind"] in ("ServiceMonitor", "PrometheusRule")]
    assert _config(objects)["PANEL_DEMO"] == "1"
    _one(objects, "Service", "redis")


# --- the image --------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "dangling line continuation"
    return instructions


def _stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(base image, instructions)], ARG defaults declared before the first FROM substituted."""
    args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, rest in _dockerfile():
        if keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest.split()[0])
            stages.append((image, []))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1][1].append((keyword, rest))
    return stages


def _final_stage() -> list[tuple[str, str]]:
    return _stages()[-1][1]


def _instruction(keyword: str) -> str:
    found = [rest for k, rest in _final_stage() if k == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def _dockerfile_uid() -> int:
    user = _instruction("USER").split(":")[0]
    assert user.isdigit(), "USER must be numeric, so that runAsNonRoot can check it"
    return int(user)


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _final_stage():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))  # type: ignore[misc]
    return env


def _healthcheck_command() -> list[str]:
    options, _, command = _instruction("HEALTHCHECK").partition("CMD ")
    assert "--timeout" in options
    return json.loads(command)  # type: ignore[no-any-return]


def test_dockerfile_is_multi_stage_and_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert all(image == "python:3.11-slim" for image, _ in stages)
    assert any("pip install" in rest for keyword, rest in stages[0][1] if keyword == "RUN")
    final = _final_stage()
    forbidden = re.compile(r"apt-get install|apk add|pip install|build-essential|gcc|\bmake\b|curl|wget")
    for keyword, rest in final:
        if keyword == "RUN":
            assert not forbidden.search(rest), f"build tools in the final stage: {rest}"
    copies = [shlex.split(rest) for keyword, rest in final if keyword == "COPY"]
    assert ["--from=builder", "/opt/venv", "/opt/venv"] in copies


def test_dockerfile_runtime_contract() -> None:
    assert _dockerfile_uid() not in (0, None)
    env = _dockerfile_env()
    assert {"PANEL_HOST": "0.0.0.0", "PANEL_PORT": "8080", "PYTHONUNBUFFERED": "1"}.items() <= env.items()
    assert set(name for name in env if name.startswith("PANEL_")) <= _settings_fields()
    assert _instruction("EXPOSE").split() == [env["PANEL_PORT"]]
    entrypoint = json.loads(_instruction("ENTRYPOINT"))
    assert entrypoint == ["sobot-panel"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "sobot-panel" in scripts
    args = build_parser().parse_args(json.loads(_instruction("CMD")))
    assert (args.command, args.workers) == ("serve", 2)
    # The image runs the installed wheel, as a user would: no source tree, no PYTHONPATH trick.
    assert "PYTHONPATH" not in env
    builder = " ".join(rest for keyword, rest in _stages()[0][1] if keyword == "RUN")
    assert "pip wheel" in builder and "pip install --no-deps /tmp/wheels/sobot_panel-" in builder
    copies = [shlex.split(rest) for keyword, rest in _final_stage() if keyword == "COPY"]
    assert copies == [["--from=builder", "/opt/venv", "/opt/venv"]]


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        forms = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(candidate, form) for candidate in candidates for form in forms):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    patterns = _dockerignore_patterns()
    for path in (".venv", ".git", "tests/artifacts", ".panel-data", ".env", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", "service/__pycache__"):  # fmt: skip
        assert _ignored(path, patterns), f"{path} would be sent to the docker daemon"
    sources: set[str] = set()
    for _, stage in _stages():
        for keyword, rest in stage:
            words = shlex.split(rest)
            if keyword == "COPY" and not any(word.startswith("--from") for word in words):
                sources.update(word for word in words[:-1] if not word.startswith("--"))
    assert {"pyproject.toml", "LICENSE", "service/", "web/"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert not _ignored(relative, patterns), f"{relative} is needed by the image but ignored"


@pytest.fixture
def status_server() -> Iterator[tuple[int, list[int]]]:
    """A local HTTP server answering /healthz with the status in `statuses[0]`."""
    statuses = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


def test_healthcheck_command_works_without_curl(status_server: tuple[int, list[int]]) -> None:
    port, statuses = status_server
    command = _healthcheck_command()
    assert command[0] == "python" and "/healthz" in command[-1]
    argv = [sys.executable, *command[1:]]
    env = {"PATH": os.environ.get("PATH", ""), "PANEL_PORT": str(port)}
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0
    statuses[0] = 503
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode != 0


# --- compose and the proxy --------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_runs_two_replicas_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    assert "version" not in compose, "the Compose specification has no version key"
    services = compose["services"]
    assert set(services) == {"redis", "panel-a", "panel-b", "proxy"}

    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]

    replicas = [services["panel-a"], services["panel-b"]]
    assert replicas[0]["environment"] == replicas[1]["environment"]
    for panel in replicas:
        assert panel["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
        assert (ROOT / panel["build"]["context"] / panel["build"]["dockerfile"]).is_file()
        assert panel["depends_on"]["redis"]["condition"] == "service_healthy"
        assert panel["read_only"] is True
        env = panel["environment"]
        assert env["PANEL_REDIS_URL"].startswith("redis://redis:")
        assert env["PANEL_DEMO"] == "1"
        assert set(env) <= _settings_fields()
        assert {"/tmp", env["PANEL_DATA_DIR"]} <= {entry.split(":")[0] for entry in panel["tmpfs"]}
        args = build_parser().parse_args(panel["command"])
        margin = SUPERVISOR_MARGIN_S if args.workers > 1 else 0.0
        assert _seconds(panel["stop_grace_period"]) >= args.grace + margin
        settings = _settings_from_env(env, monkeypatch)
        assert not settings.session_key_generated and settings.api_token and settings.ops_token

    proxy = services["proxy"]
    assert proxy["image"] == "nginx:1.27-alpine"
    assert proxy["ports"] == ["8080:80"]
    (mount,) = proxy["volumes"]
    source, target, *_ = mount.split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and target.startswith("/etc/nginx/")
    for name in ("panel-a", "panel-b"):
        assert proxy["depends_on"][name]["condition"] == "service_healthy"


def _nginx_blocks(text: str) -> list[Any]:
    """nginx.conf as nested [name, args, children-or-None] lists."""
    text = re.sub(r"#[^\n]*", "", text)
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};]+', text)
    position = 0

    def block() -> list[Any]:
        nonlocal position
        items: list[Any] = []
        words: list[str] = []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                items.append([words[0], words[1:], None])
                words = []
            elif token == "{":
                items.append([words[0], words[1:], block()])
                words = []
            elif token == "}":
                return items
            else:
                words.append(token.strip("\"'"))
        return items

    return block()


def _effective(chain: list[list[Any]], directive: str) -> list[list[str]]:
    """A directive's values in the innermost block of `chain` that sets it (nginx inheritance)."""
    for items in reversed(chain):
        values = [args for name, args, children in items if name == directive and children is None]
        if values:
            return values
    return []


def test_nginx_fans_out_and_upgrades_websockets() -> None:
    top = _nginx_blocks(NGINX_CONF.read_text(encoding="utf-8"))
    upstreams = {args[0]: children for name, args, children in top if name == "upstream"}
    (upstream_name,) = upstreams
    servers = {args[0] for name, args, _ in upstreams[upstream_name] if name == "server"}
    port = _dockerfile_env()["PANEL_PORT"]
    assert servers == {f"panel-a:{port}", f"panel-b:{port}"}
    maps = {args[1]: {c[0]: (c[1] or [""])[0] for c in children} for name, args, children in top if name == "map"}
    (server,) = [children for name, _, children in top if name == "server"]
    locations = {args[-1]: children for name, args, children in server if name == "location"}
    assert {"/ws", "/ops", "/"} <= set(locations)

    def value(raw: str) -> str:
        return maps[raw]["default"] if raw in maps else raw

    assert locations.pop("/metrics") == [["return", ["404"], None]], "metrics never leave through the proxy"
    for path, location in locations.items():
        chain = [top, server, location]
        assert _effective(chain, "proxy_pass") == [[f"http://{upstream_name}"]], path
        assert _effective(chain, "proxy_http_version") == [["1.1"]], path
        headers = {args[0].lower(): args[1] for args in _effective(chain, "proxy_set_header")}
        for header in ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"):
            assert header in headers, f"{path}: {header} is not forwarded"
        if path in {"/ws", "/ops"}:
            assert headers["upgrade"] == "$http_upgrade"
            assert value(headers["connection"]).lower() == "upgrade"
            (timeout,) = _effective(chain, "proxy_read_timeout")
            assert _seconds(timeout[0]) >= 3600, path
    # A plain request keeps the upstream connection alive: no "Connection: upgrade" without Upgrade.
    connection = {args[0].lower(): args[1] for args in _effective([top, server], "proxy_set_header")}["connection"]
    assert maps[connection].get("") == ""


# --- what the edge logs, and what the operators are told ------------------------------------------------

QUERY_VARIABLES = ("$request ", "$request\"", "$request_uri", "$args", "$query_string", "$arg_", "$http_referer",
                   "$is_args")  # fmt: skip


def test_nginx_logs_no_query_string_and_no_referer() -> None:
    top = _nginx_blocks(NGINX_CONF.read_text(encoding="utf-8"))
    formats = {args[0]: " ".join(args[1:]) for name, args, _ in top if name == "log_format"}
    (server,) = [children for name, _, children in top if name == "server"]
    logs = [args for name, args, _ in [*top, *server] if name == "access_log"]
    assert logs and all(len(args) >= 2 and args[1] in formats for args in logs), "every access_log names a format"
    for name, text in formats.items():
        assert "$uri" in text and "$status" in text, name
        for variable in QUERY_VARIABLES:
            assert variable not in text + " ", f"log_format {name} logs {variable.strip()}"


def test_readme_tells_ingress_nginx_operators_how_to_keep_queries_out_of_logs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8") + (DEPLOY / "README.md").read_text(encoding="utf-8")
    match = re.search(r"log-format-upstream: '([^']+)'", readme)
    assert match, "the ingress-nginx ConfigMap setting is documented"
    assert "$uri" in match.group(1)
    for variable in QUERY_VARIABLES:
        assert variable not in match.group(1) + " ", variable


def test_shared_spool_overlay_puts_the_spool_on_a_shared_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["overlays/production-shared-spool"]
    config = _config(objects)
    container = _panel_container(objects)
    volumes = {v["name"]: v for v in _panel(objects)["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    claim = mounts[config["PANEL_SPOOL_DIR"]]["persistentVolumeClaim"]["claimName"]
    pvc = _one(objects, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every replica mounts it"
    assert "emptyDir" in mounts[config["PANEL_DATA_DIR"]], "the rest of the data dir stays per pod"
    assert config["PANEL_SPOOL_DIR"] != config["PANEL_DATA_DIR"]


def test_ops_consumer_overlay_counts_in_one_deployment_of_its_own(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The pods that take sends run no ops consumer; one Deployment beside them, with the same image,
    settings and namespace, not behind the Service, runs it."""
    objects = rendered["overlays/production-ops-consumer"]
    assert _config(objects)["PANEL_OPS_CONSUMER"] == "off"
    web = _panel(objects)
    ops = _one(objects, "Deployment", "sobot-panel-ops")
    (container,) = [c for c in ops["spec"]["template"]["spec"]["containers"] if c["name"] == "panel"]
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    assert env["PANEL_OPS_CONSUMER"] == "on" and ops["spec"]["replicas"] == 1
    assert container["image"] == _panel_container(objects)["image"]
    assert container["envFrom"] == _panel_container(objects)["envFrom"]
    assert ops["metadata"].get("namespace") == web["metadata"].get("namespace")
    pod_labels = ops["spec"]["template"]["metadata"]["labels"]
    assert not _matches(_one(objects, "Service", "sobot-panel")["spec"]["selector"], pod_labels), "takes no sends"
    assert not _matches(web["spec"]["selector"]["matchLabels"], pod_labels)


def test_alert_rules_watch_what_readiness_no_longer_does(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from sobot_panel.observability import Metrics

    rule = _one(rendered["overlays/production"], "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"SobotPanelRedisDown", "SobotPanelAuditConsumerBehind", "SobotPanelAuditEntriesDropped"} <= set(alerts)
    exposed = Metrics().exposition().decode()
    for expr in alerts.values():
        for metric in re.findall(r"\b(panel_[a-z_]+)", expr):
            assert f"# TYPE {metric.removesuffix('_total')} " in exposed or f"# TYPE {metric} " in exposed, metric


def test_many_companies_overlay_mounts_the_tenants_file_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from sobot_panel.tenants.config import load_tenants

    objects = rendered["overlays/many-companies"]
    config = _config(objects)
    assert "PANEL_SYSNUM" not in config  # every company is a tenant there
    tenants_path = Path(config["PANEL_TENANTS"])
    container = _panel_container(objects)
    volumes = {v["name"]: v for v in _panel(objects)["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(tenants_path.parent)]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "sobot-panel-tenants"
    example = load_tenants(K8S / "overlays" / "many-companies" / "tenants.example.toml")
    assert set(example) == {"acme", "globex"}
