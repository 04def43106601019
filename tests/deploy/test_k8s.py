"""The Kubernetes manifests (no cluster runs here): against the API models, against each other and against
Compose (images, ports, environment), the autoscaler's metric, and the trainer Job's rendezvous and
failure policy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.compose_files import command_argv, compose_with_env, read_dotenv
from tests.deploy.k8s_files import (
    K8S,
    POD_IP,
    api_problems,
    container,
    container_env,
    expand,
    k8s_object,
    k8s_objects,
    kustomization,
    pod_spec,
)
from tests.deploy.program_parsers import container_commands, resolve
from tests.service_helpers import REPO


def test_manifests_fit_the_kubernetes_api():
    pytest.importorskip("kubernetes", reason="the Kubernetes API models come with the kubernetes client (dev extra)")
    problems = []
    for obj in k8s_objects():
        model = f"{obj['apiVersion'].split('/')[-1].capitalize()}{obj['kind']}"
        problems += api_problems(obj, model, f"{obj['kind']}/{obj['metadata']['name']}")
    assert not problems, "\n".join(problems)
    assert api_problems({"spec": {"replica": 2}}, "V1Deployment", "x") == [
        "x.spec: V1DeploymentSpec has no field 'replica'"
    ]


def test_kustomization_lists_every_manifest_and_renders():
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: the kustomize rendering is not checked")
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert len(objects) == len(k8s_objects())
    image = kustomization()["images"][0]
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ctp-video"
        if obj["kind"] in ("Deployment", "Job") and obj["metadata"]["name"] != "ctp-redis":
            for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]:
                assert c["image"] == f"{image['newName']}:{image['newTag']}"


def test_images_agree_across_manifests_and_compose():
    image, env = kustomization()["images"][0], read_dotenv()
    assert (image["name"], image["newTag"]) == (env["CTP_IMAGE"], env["CUDA_VARIANT"])
    compose = compose_with_env()["services"]
    for obj in k8s_objects():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]:
            if obj["metadata"]["name"] == "ctp-redis":
                assert c["image"] == compose["redis"]["image"] and c["args"] == compose["redis"]["command"]
            else:
                assert c["image"] == compose["datagen"]["image"] == f"{image['name']}:{image['newTag']}"


def test_ports_agree():
    from datagen.cli import build_parser

    datagen = k8s_object("Deployment", "ctp-datagen")
    c = container(datagen, "datagen")
    serve = build_parser().parse_args(expand(c["command"], container_env(c))[1:])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": serve.port, "metrics": serve.metrics_port}
    assert serve.advertise == f"{POD_IP}:{serve.port}", "replicas must register the address clients can reach"
    assert datagen["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(serve.metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert (
            command[:2] == ["ctp-ready", "replica"]
            and command[command.index("--addr") + 1] == f"127.0.0.1:{serve.port}"
        )
    service = k8s_object("Service", "ctp-datagen")
    assert {p["name"]: (p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]} == {
        "grpc": (serve.port, serve.port),
        "metrics": (serve.metrics_port, serve.metrics_port),
    }
    compose_serve = command_argv(compose_with_env()["services"]["datagen"]["command"])
    assert compose_serve[compose_serve.index("--port") + 1] == str(serve.port)

    redis_container = container(k8s_object("Deployment", "ctp-redis"), "redis")
    redis_service = k8s_object("Service", "ctp-redis")
    redis_port = {p["name"]: p["containerPort"] for p in redis_container["ports"]}[
        redis_service["spec"]["ports"][0]["targetPort"]
    ]
    url = urlsplit(container_env(c)["CTP_REDIS_URL"])
    assert (url.hostname, url.port) == ("ctp-redis", redis_service["spec"]["ports"][0]["port"]) and redis_port == 6379

    for service in (o for o in k8s_objects() if o["kind"] == "Service"):
        selected = [
            w
            for w in k8s_objects()
            if w["kind"] in ("Deployment", "Job")
            and service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"


def test_autoscaler_targets_datagen_on_a_metric_replicas_export():
    from datagen.service.server.metrics import ReplicaMetrics

    hpa = k8s_object("HorizontalPodAutoscaler", "ctp-datagen")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ctp-datagen"}
    exported = {metric.name for metric in ReplicaMetrics().registry.collect()}
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom and set(custom) <= exported, f"{custom} are not among the replica's metrics {sorted(exported)}"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_environment_agrees():
    from common.env import DATAGEN_TOKEN, REDIS_URL

    REDIS_ENV, TOKEN_ENV = REDIS_URL.name, DATAGEN_TOKEN.name
    datagen = k8s_object("Deployment", "ctp-datagen")
    trainer = k8s_object("Job", "ctp-trainer")
    containers = [container(datagen, "datagen"), container(trainer, "trainer"), container(trainer, "wait-for-replicas")]
    for c in containers:
        env = container_env(c)
        unresolved = [a for a in expand(c["command"], env) if "$(" in a]
        assert not unresolved, f"{c['name']}: {unresolved} name no variable of the container"
        assert {REDIS_ENV, TOKEN_ENV, "CTP_NAMESPACE", "CTP_VIDEOS"} <= env.keys(), c["name"]
        token = next(v for v in c["env"] if v["name"] == TOKEN_ENV)["valueFrom"]["secretKeyRef"]
        assert token == {"name": "ctp-datagen-token", "key": "token", "optional": True}
    assert len({json.dumps(c["envFrom"]) for c in containers}) == 1, "datagen and trainer read one ConfigMap"
    config, env = k8s_object("ConfigMap", "ctp-config")["data"], read_dotenv()
    shared = config.keys() & env.keys()
    assert shared >= {"CTP_NAMESPACE", "CTP_VIDEOS", "CTP_RUN_NAME", "TRAINER_CONFIG"}
    assert {k: config[k] for k in shared - {REDIS_ENV}} == {k: env[k] for k in shared - {REDIS_ENV}}
    for workload in (datagen, trainer):
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mounts = [m for c in pod_spec(workload)["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/data"]
        assert mounts and all(m["readOnly"] for m in mounts)
        assert volumes[mounts[0]["name"]]["persistentVolumeClaim"] == {"claimName": "ctp-data", "readOnly": True}
        assert config["CTP_VIDEOS"].startswith("/data")


def test_trainer_job_meets_through_c10d_rendezvous(monkeypatch):
    from torch.distributed.run import get_args_parser

    from trainer.cli import build_parser
    from trainer.config import load_train_config
    from trainer.pretrain.sources import replica_settings

    job, service = k8s_object("Job", "ctp-trainer"), k8s_object("Service", "ctp-trainer")
    spec, c = job["spec"], container(job, "trainer")
    torchrun = get_args_parser().parse_args(expand(c["command"], container_env(c))[1:])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == int(torchrun.nnodes)
    host, _, port = torchrun.rdzv_endpoint.partition(":")
    subdomain = pod_spec(job)["subdomain"]
    assert host == f"{job['metadata']['name']}-0.{subdomain}" and subdomain == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert int(port) == service["spec"]["ports"][0]["port"] == c["ports"][0]["containerPort"]
    assert (
        torchrun.rdzv_backend == "c10d"
        and torchrun.nproc_per_node == "gpu"
        and "nvidia.com/gpu" in c["resources"]["limits"]
    )
    pretrain = build_parser().parse_args(torchrun.training_script_args)
    datagen = container(k8s_object("Deployment", "ctp-datagen"), "datagen")
    videos = expand(datagen["command"], container_env(datagen))[2]
    assert f"data.videos=[{videos}]" in expand(pretrain.overrides, container_env(c))
    for name, value in container_env(c).items():  # the trainer reads the fleet from its environment
        monkeypatch.setenv(name, value)
    fleet = replica_settings(load_train_config(pretrain.config, expand(pretrain.overrides, container_env(c))).service)
    serve = expand(datagen["command"], container_env(datagen))
    assert fleet is not None and fleet["redis_url"] == container_env(datagen)["CTP_REDIS_URL"]
    assert fleet["namespace"] == serve[serve.index("--namespace") + 1]
    from datagen.cli import build_parser as datagen_parser
    from datagen.ctp.spec import load_generation

    served = load_generation(datagen_parser().parse_args(serve[1:]).config)
    assert served == load_train_config(pretrain.config).data.generation, "replicas serve the trainer's generation"
    wait = container(job, "wait-for-replicas")["command"]
    assert wait[:2] == ["ctp-ready", "fleet"], "the trainer starts once a replica serves"


def test_trainer_job_outlives_lost_drained_and_stopped_pods():
    from torch.distributed.run import get_args_parser

    from trainer.runtime.launch import SHARED_STORE_ENV, store_host_conf
    from trainer.runtime.signals import STOPPED_EXIT

    job = k8s_object("Job", "ctp-trainer")
    spec, c = job["spec"], container(job, "trainer")
    command = expand(c["command"], container_env(c))
    assert command[0] == "ctp-torchrun", "torchrun exits 1 for a stopped run and races for the store's host"
    assert container_env(c)[SHARED_STORE_ENV] == "1", "a restarted pod deadlocks the rendezvous otherwise"
    torchrun = get_args_parser().parse_args(command[1:])
    host = torchrun.rdzv_endpoint.partition(":")[0]
    assert host.startswith(f"{job['metadata']['name']}-0."), "the store is on pod 0"
    assert "is_host=true" in store_host_conf(torchrun, "0") and "is_host=false" in store_host_conf(torchrun, "1")
    # podFailurePolicy needs restartPolicy Never; with it, neither a disruption nor a stopped run is a failure.
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert {
        "action": "Ignore",
        "onExitCodes": {"containerName": c["name"], "operator": "In", "values": [STOPPED_EXIT]},
    } in rules
    assert all(rule["action"] == "Ignore" for rule in rules), "nothing here is a reason to fail the whole Job"
    assert spec["backoffLimit"] >= 2 * spec["completions"]
    assert pod_spec(job)["terminationGracePeriodSeconds"] > 30, "torchrun gives its workers 30 s after SIGTERM"


def test_every_torchrun_start_is_one_that_survives_a_lost_node():
    """Containers and the documented multi-node commands start torchrun through ctp-torchrun, which sets
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (tests/trainer/test_launch.py): with plain torchrun, a restarted node
    deadlocks the rendezvous (torch >= 2.5, pytorch/pytorch#135712) and a stopped run exits as a crash."""
    for where, argv in container_commands().items():
        assert ("torchrun",) not in set(resolve(argv)), f"{where}: run ctp-torchrun, not torchrun"
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in docs:
        for line in path.read_text().splitlines():
            multinode = re.search(r"--nnodes[= ](\S+)", line) and not re.search(r"--nnodes[= ]1\b", line)
            if multinode and re.search(r"(?<![\w-])torchrun\b", line):
                pytest.fail(f"{path.name}: a multi-node command runs torchrun, not ctp-torchrun: {line.strip()}")
