"""The self-check, end to end on this CPU: `ctp-datagen verify` on the shared footage and on DALI-CPU's codecs,
a wrong-frame decoder caught and routed, the tensor renderer against the CPU kernels (and a faulty one
refused), and a replica that publishes its routes in Prometheus, Redis and `ctp-datagen status`."""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.request

import numpy as np
import pytest

from datagen import verify as verify_module
from datagen.cli import main
from datagen.generator import Generator
from datagen.verify import RendererMismatch, check_rendering
from datagen.video.decode.decoder import Decoder
from datagen.video.manifest import resolve_videos
from datagen.video.synthetic import synthesize_demo


@pytest.fixture(scope="module")
def dali_cpu_dir(tmp_path_factory):
    """VP9, VP8 and MJPEG (what DALI-CPU decodes) beside an H.264 file (PyAV's)."""
    out = tmp_path_factory.mktemp("verify")
    synthesize_demo(out, 4, 2.0, codecs=("vp9", "vp8", "mjpeg", "h264"))
    return out


def test_verify_on_the_shared_footage_prints_every_class_and_exits_0(shared_videos, capsys):
    assert main(["verify", "--videos", str(shared_videos), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for label in (
        "h264/mov/yuv420p/reordered",
        "mpeg4/avi/yuv420p/in order",
        "mpeg4/avi/yuv420p/packed-B/reordered, unordered stamps",
    ):
        assert label in out
    assert "render (CtP samples)" in out and "8/8 samples equal" in out and "all checks passed" in out


def test_verify_compares_dali_cpu_with_pyav_and_reports_json(dali_cpu_dir, capsys):
    assert main(["verify", "--videos", str(dali_cpu_dir), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["render"]["ok"] and report["render"]["samples"] == 8
    verdicts = {c["class"].split("/")[0]: (c["verdict"], c["backend"]) for c in report["classes"]}
    assert verdicts == {
        "vp9": ("PASS", "dali"),
        "vp8": ("PASS", "dali"),
        "mjpeg": ("PASS", "dali"),
        "h264": ("reference", "pyav"),
    }
    probed = [c for c in report["classes"] if c["verdict"] == "PASS"]
    assert all(re.search(r"\d+/(1\d|2\d) frames equal, min PSNR", c["reason"]) for c in probed)  # frames compared


def test_verify_catches_a_decoder_that_returns_shifted_frames_and_exits_1(dali_cpu_dir, capsys, monkeypatch):
    from datagen.video.decode.dali import DaliDecoder

    real = DaliDecoder.decode_batch

    def shifted(self, requests, trim=None, mapper=map):
        return real(self, [(v, np.minimum(np.asarray(i) + 1, v.num_frames - 1)) for v, i in requests], trim, mapper)

    monkeypatch.setattr(DaliDecoder, "decode_batch", shifted)
    assert main(["verify", "--videos", str(dali_cpu_dir), "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    vp9 = next(line for line in out.splitlines() if line.startswith("vp9/"))
    assert "FAIL" in vp9 and "misplaced" in vp9 and vp9.rstrip().endswith("pyav")
    assert "CHECKS FAILED" in out


def test_the_tensor_renderer_matches_the_cpu_kernels(shared_videos):
    generator = Generator(resolve_videos([shared_videos]), device="cpu", decoder=Decoder("cpu", "pyav"))
    check = check_rendering(generator, samples=6)
    assert check.ok and check.samples == 6 and check.equal == 6 and check.max_diff == 0


def faulty_renderer(plans, frames, crop_size):
    """The tensor renderer with a fault only where patches are pasted: every patch half as opaque."""
    from datagen.ctp.render import render_clips

    return render_clips(dataclasses.replace(plans, opacity=plans.opacity / 2), frames, crop_size)


def test_a_renderer_that_differs_refuses_to_serve_and_names_the_samples(shared_videos, monkeypatch):
    videos = resolve_videos([shared_videos / "ucf101"])
    monkeypatch.setattr(verify_module, "render_clips", faulty_renderer)
    with pytest.raises(RendererMismatch, match=r"samples \[\(0, 0, \d+\).*--no-render-check"):
        Generator(videos, device="cpu", decoder=Decoder("cpu", "pyav"), self_check=True)
    generator = Generator(videos, device="cpu", decoder=Decoder("cpu", "pyav"), self_check=True, check_renderer=False)
    assert generator.checked is not None and generator.checked.render is None  # not checked, as asked


def test_a_generator_that_checks_itself_probed_every_dali_class(dali_cpu_dir):
    generator = Generator(resolve_videos([dali_cpu_dir]), device="cpu", self_check=True)
    report = generator.checked
    assert report is not None and report.ok and report.render is not None and report.render.ok
    probed = {c.cls.codec: c.route for c in report.classes if c.backend == "dali"}
    assert set(probed) == {"vp9", "vp8", "mjpeg"} and all(r.verified for r in probed.values())
    assert generator.decoder.stats["probes"] == 3


def test_a_replica_publishes_its_routes_as_metrics_in_redis_and_in_status(dali_cpu_dir, tmp_path, capsys):
    from datagen.service.registry import Registry
    from datagen.service.server.servicer import Replica
    from tests.service_helpers import RedisServer, tiny_config, wait_until

    config = tiny_config()
    redis_server = RedisServer(tmp_path / "redis")
    try:
        generator = Generator(resolve_videos([dali_cpu_dir]), config, device="cpu", self_check=True)
        replica = Replica(
            generator, config, "cpu", registry=Registry(redis_server.url, "t"), heartbeat_s=0.2, metrics_port=0
        )
        replica.start()
        try:
            url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            assert (
                'ctp_datagen_decode_route{backend="dali",decode_class="vp9/matroska/yuv420p/in order, stamps?"} 1.0'
                in text
            )
            records = wait_until(lambda: Registry(redis_server.url, "t").replicas(), 30, "the replica's record")
            assert records[0].routes["vp8/matroska/yuv420p/in order, stamps?"] == "dali"
            assert main(["status", "--redis", redis_server.url, "--namespace", "t"]) == 0
            out = capsys.readouterr().out
            assert "decode routes (3 classes" in out and "mjpeg/avi/yuvj420p/in order, stamps?" in out
        finally:
            replica.drain(1)
    finally:
        redis_server.stop()
