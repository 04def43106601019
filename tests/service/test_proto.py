"""The wire contract: the committed generated code is what the .proto generates today."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import build

pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the code")


def test_generated_code_is_current(tmp_path: Path) -> None:
    build.generate(tmp_path)
    for name in build.GENERATED:
        fresh = (tmp_path / "protos" / name).read_text()
        committed = (build.ROOT / "protos" / name).read_text()
        assert fresh == committed, f"protos/{name} is stale: run `make proto` (python -m protos.build) and commit it"


def test_contract_is_versioned_and_complete() -> None:
    from protos import datagen_pb2 as pb

    assert pb.DESCRIPTOR.package == "ctp.datagen.v1"
    service = pb.DESCRIPTOR.services_by_name["DataGen"]
    generate = service.methods_by_name["Generate"]
    assert generate.server_streaming and not generate.client_streaming
    assert not service.methods_by_name["Describe"].server_streaming
    header = pb.BatchHeader.DESCRIPTOR
    assert {o.name for o in header.oneofs} == {"clip_transport"}
    assert {f.name for f in header.oneofs_by_name["clip_transport"].fields} == {"inline_bytes", "shared_memory"}
