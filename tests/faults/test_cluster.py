"""Node loss on a cluster: three Kafka and three Cassandra nodes (replication 3), one node SIGKILLed mid-run.

The consumer must go on without stopping while the node is gone (LOCAL_QUORUM and LOCAL_SERIAL need two of
three replicas; acks=all and min.insync.replicas=2 need two of three brokers), and the end state must be exact
without any repair: every cart equal to the fold of the topic, committed offsets at the end offsets.
"""

from __future__ import annotations

import re
import time
from typing import Iterator

import pytest

from rxcqrs.kafka.admin import partition_leaders
from tests.faults.conftest import Servers
from tests.faults.scenario import Scenario, zombie

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]


@pytest.fixture
def cluster(cluster_servers: Servers) -> Iterator[Servers]:
    """Whatever a scenario killed runs again afterwards (and is in the ring again)."""
    yield cluster_servers
    for kind in ("cassandra", "kafka"):
        cluster_servers.start(kind)


def leader_of(servers: Servers, topic: str, partition: int) -> int:
    """The node id (= node number) leading ``topic``'s ``partition``, as the brokers report it."""
    return partition_leaders(topic, bootstrap_servers=servers.bootstrap)[partition]


def summary(output: str) -> str:
    found = re.findall(r"^done: .*$", output, re.MULTILINE)
    return found[-1] if found else ""


def test_a_cassandra_node_killed_mid_run_and_back(cluster: Servers) -> None:
    run = Scenario(cluster, "cnode", idempotent=True)
    consumer = run.consumer("--stop-when-idle", "5")
    run.wait_committed(0.2, consumer)
    cluster.kill("cassandra-1")  # the seed, and the first contact point of every client
    down = time.monotonic()
    run.wait_committed(0.6, consumer)  # going on with two of three replicas
    progressed_down = round(time.monotonic() - down, 1)
    cluster.start("cassandra")
    run.finish(consumer)
    figures = run.verify(killed="cassandra-1", committed_while_down="20% -> 60%",
                         seconds_to_40_percent_while_down=progressed_down, consumer=summary(consumer.output))
    assert figures.unknown_outcomes == 0 and figures.extra["exact_before_compensation"], figures


@pytest.mark.long_cluster
def test_the_kafka_partition_leader_killed_mid_run_and_back(cluster: Servers) -> None:
    run = Scenario(cluster, "kleader", idempotent=True, published=0.5)
    consumer = run.consumer("--stop-when-idle", "15")
    run.wait_committed(0.1, consumer)
    leader = leader_of(cluster, run.topic, 0)
    cluster.kill(f"kafka-{leader}")
    down = time.monotonic()
    run.publish_rest()  # the producer goes on: two in-sync replicas of three are enough for acks=all
    published_s = round(time.monotonic() - down, 1)
    run.wait_committed(0.6, consumer)  # and the consumer, from the new leaders
    moved_to = leader_of(cluster, run.topic, 0)
    assert moved_to != leader
    progressed_down = round(time.monotonic() - down, 1)
    cluster.start("kafka")
    run.finish(consumer)
    run.verify(killed=f"kafka-{leader}", leader_moved_to=f"kafka-{moved_to}", published_half_while_down_s=published_s,
               seconds_to_60_percent_while_down=progressed_down, consumer=summary(consumer.output))


def test_a_zombie_member_on_the_cluster_changes_nothing(cluster: Servers) -> None:
    """The zombie scenario (see :func:`tests.faults.scenario.zombie`) with replication 3."""
    zombie(cluster, Scenario(cluster, "czombie", True, published=0.2))
