"""Kafka fixtures: one Tansu broker per test session, a fresh topic per test.

Set ``SLOBURN_KAFKA_BOOTSTRAP=host:port`` to run the same tests against an existing Kafka cluster
instead (topics are then created through its admin API and left behind).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from engine.io.broker import EmbeddedBroker, create_topics, run_sync

__all__ = ["embedded_broker", "kafka_broker", "kafka_topic", "kafka_topic_factory"]

EXTERNAL_BOOTSTRAP_ENV = "SLOBURN_KAFKA_BOOTSTRAP"


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker | None]:
    """The session's Tansu broker, or None when an external cluster is configured."""
    if os.environ.get(EXTERNAL_BOOTSTRAP_ENV):
        yield None
        return
    log_path = tmp_path_factory.mktemp("kafka") / "tansu.log"
    broker = EmbeddedBroker(log_path=log_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(embedded_broker: EmbeddedBroker | None) -> str:
    """Bootstrap ``host:port`` of the session's broker."""
    if embedded_broker is None:
        return os.environ[EXTERNAL_BOOTSTRAP_ENV]
    return embedded_broker.bootstrap


@pytest.fixture
def kafka_topic_factory(kafka_broker: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make(partitions=3, suffix="") -> name``: creates a topic no other test uses."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-")

    def make(partitions: int = 3, suffix: str = "") -> str:
        name = f"{stem}{suffix}-{uuid.uuid4().hex[:8]}"
        run_sync(lambda: create_topics(kafka_broker, {name: partitions}, exist_ok=False))
        return name

    return make


@pytest.fixture
def kafka_topic(kafka_topic_factory: Callable[..., str]) -> str:
    """A fresh topic with 3 partitions."""
    return kafka_topic_factory(3)
