"""The Kubernetes manifests (deploy/k8s, listed by their kustomization) read as objects, and their fields
checked against the API models of the kubernetes client."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from tests.service_helpers import REPO

K8S = REPO / "deploy" / "k8s"
POD_IP = "10.1.2.3"  # stands in for the downward API's status.podIP


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_objects() -> list[dict]:
    objects = []
    for name in kustomization()["resources"]:
        objects += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return objects


def k8s_object(kind: str, name: str) -> dict:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str) -> dict:
    spec = pod_spec(workload)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def container_env(c: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ConfigMaps from envFrom, then env."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[var["name"]] = POD_IP
        else:
            env[var["name"]] = ""  # from a Secret
    return env


def expand(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command and args; an undefined reference is left as it is."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg) for arg in argv]


def api_problems(value: Any, type_name: str, where: str) -> list[str]:
    """Where `value` does not fit the Kubernetes API type `type_name` (field names and value types)."""
    import kubernetes.client

    if listed := re.fullmatch(r"[Ll]ist\[(.+)\]", type_name):  # list[X] in older clients, List[X] in newer
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in api_problems(item, listed[1], f"{where}[{i}]")]
    if mapped := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = mapped[1] or mapped[2]
        return [p for key, item in value.items() for p in api_problems(item, inner, f"{where}.{key}")]
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "object": object}
    if type_name in scalars:
        wrong = not isinstance(value, scalars[type_name]) or (type_name == "int" and isinstance(value, bool))
        return [f"{where}: expected {type_name}, got {value!r}"] if wrong else []
    model = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{where}: {type_name} has no field {key!r}")
        else:
            problems += api_problems(item, model.openapi_types[fields[key]], f"{where}.{key}")
    return problems
