import pytest

from tests.integration.kafka_fixtures import *  # noqa: F403
from tests.integration.pd_fixtures import *  # noqa: F403


@pytest.fixture(scope="session", autouse=True)
def _warm_kernel_cache() -> None:
    """Compile the engine's kernels once, into numba's on-disk cache, before any daemon subprocess
    starts: a cold cache would make each of them compile for seconds first."""
    import numpy as np

    from engine.batch import EventBatch
    from engine.config import parse_config
    from engine.engine import Engine

    eng = Engine(parse_config({"slos": [
        {"name": "warm", "service": "warm", "objective": 99, "sli": {"latency": {"threshold_ms": 1}}}]}))
    key = eng.key_id("warm")
    ts = 1_700_000_000 * 10**9 + np.arange(100, dtype=np.int64) * 10**8
    eng.ingest(EventBatch.from_arrays(ts, np.full(100, key), np.full(100, 200), np.full(100, 5000.0)))
    eng.advance(int(ts[-1]) + 2 * 10**9)
    eng.statuses()
