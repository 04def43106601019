"""Replica log lines keep their subject: which replica, why, and how long the client waits before giving up."""

import logging
import socket

from common.jsonlog import PlainFormatter
from datagen.cli import main


def test_plain_format_keeps_the_extra_fields():
    record = logging.LogRecord(
        "datagen.service.client.remote_source", logging.WARNING, "", 0, "datagen replica down", None, None
    )
    record.address, record.reason = "10.0.0.7:50051", "UNAVAILABLE: connection refused"
    line = PlainFormatter().format(record)
    assert line.endswith("datagen replica down (address=10.0.0.7:50051, reason=UNAVAILABLE: connection refused)")


def test_pull_from_a_dead_address_says_how_long_it_waits_and_ends_with_a_clear_error(caplog, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    caplog.set_level(logging.INFO)
    assert main(["pull", "--addr", address, "--epoch", "0", "--num-samples", "4", "--wait", "2"]) == 2
    err = capsys.readouterr().err
    assert "error: no usable datagen replica after 2 s" in err and address in err and "Traceback" not in err
    messages = [r.getMessage() for r in caplog.records]
    assert f"waiting up to 2 s for a datagen replica (addresses {address})" in messages
    down = [m for m in messages if m.startswith(f"datagen replica {address} down (UNAVAILABLE")]
    assert down and "retrying in" in down[0] and "giving up after 2 s without any live replica" in down[0]


def test_serve_on_free_ports_prints_where_it_listens(demo_dir):
    import os
    import re
    import signal
    import subprocess

    from tests.service_helpers import REPO, TINY, serve_command

    args = [*serve_command([demo_dir]), *TINY]
    process = subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert re.fullmatch(
            r"ctp-datagen serve: listening on 127\.0\.0\.1:(\d+) \(gRPC\), "
            r"metrics on http://127\.0\.0\.1:(\d+)/metrics\n",
            line,
        ), line
        assert "50051" not in line.split(" (gRPC)")[0]  # a free port, not the default
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
