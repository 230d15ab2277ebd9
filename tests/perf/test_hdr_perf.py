"""Throughput of the HDR kernels, with the ``hdrhistogram`` package's ``record_value`` loop for comparison.

Run: ``.venv/bin/pytest -m perf --benchmark-enable tests/perf/test_hdr_perf.py``. JIT compilation is done
before timing. Each benchmark also checks its result against the package, so a fast wrong kernel fails.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hdrh.histogram import HdrHistogram

from engine.hdr import HdrLayout, decode_v2, encode_v2
from engine.kernels.hdr import N_REJECT_REASONS, record_batch, ring_percentiles, values_at_percentiles

pytestmark = pytest.mark.perf

SEED = 7_031
N_KERNEL = 1_000_000
N_PACKAGE = 100_000
N_SLOTS = 5
P3 = np.array([50.0, 95.0, 99.0])


def _latencies_us(n: int, highest: int, seed: int = SEED) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=math.log(20_000.0), sigma=1.6, size=n)
    return np.clip(values, 1.0, float(highest))


def _rate(benchmark: Any, n: int) -> None:
    if benchmark.stats is not None:  # None when run with --benchmark-disable
        benchmark.extra_info["values_per_s"] = n / benchmark.stats.stats.mean


def test_record_batch_1m_values(benchmark: Any) -> None:
    print(f"seed={SEED}")
    layout = HdrLayout()
    um, hm, hi = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude, layout.highest_trackable_value
    values = _latencies_us(N_KERNEL, hi)
    weights = np.ones(N_KERNEL, np.int64)
    ring = layout.zeros(N_SLOTS)
    rejected = np.zeros(N_REJECT_REASONS, np.int64)
    record_batch(ring, 1, values[:10], weights[:10], um, hm, hi, rejected)  # compile outside the timing

    def run() -> int:
        ring[0] = 0
        return record_batch(ring, 0, values, weights, um, hm, hi, rejected)

    assert benchmark(run) == 0
    _rate(benchmark, N_KERNEL)
    assert int(ring[0].sum()) == N_KERNEL
    sample = np.floor(values[:2_000] + 0.5).astype(np.int64)  # no .5 ties in lognormal draws
    ref = HdrHistogram(1, hi, 2)
    mine = layout.zeros(1)
    for v in sample.tolist():
        ref.record_value(v)
    record_batch(mine, 0, values[:2_000], weights[:2_000], um, hm, hi, rejected)
    np.testing.assert_array_equal(mine[0], np.ctypeslib.as_array(ref.counts).astype(np.int64))


def test_ring_three_percentiles(benchmark: Any) -> None:
    layout = HdrLayout()
    um, hm, hi = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude, layout.highest_trackable_value
    ring = layout.zeros(N_SLOTS)
    rejected = np.zeros(N_REJECT_REASONS, np.int64)
    for slot in range(N_SLOTS):
        vals = np.rint(_latencies_us(20_000, hi, SEED + slot))
        record_batch(ring, slot, vals, np.ones(vals.shape[0], np.int64), um, hm, hi, rejected)
    scratch = layout.zeros()
    out = np.zeros(3, np.int64)
    ring_percentiles(ring, 3, N_SLOTS, P3, scratch, out, um, hm)  # compile outside the timing

    total = benchmark(ring_percentiles, ring, 3, N_SLOTS, P3, scratch, out, um, hm)
    assert total == 20_000 * N_SLOTS
    ref = HdrHistogram.decode(encode_v2(ring.sum(axis=0), layout))
    assert out.tolist() == [ref.get_value_at_percentile(p) for p in P3]


def test_single_histogram_three_percentiles(benchmark: Any) -> None:
    layout = HdrLayout()
    um, hm, hi = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude, layout.highest_trackable_value
    counts = layout.zeros(1)
    vals = np.rint(_latencies_us(100_000, hi))
    record_batch(
        counts, 0, vals, np.ones(vals.shape[0], np.int64), um, hm, hi, np.zeros(N_REJECT_REASONS, np.int64)
    )
    out = np.zeros(3, np.int64)
    values_at_percentiles(counts[0], 100_000, P3, out, um, hm)
    benchmark(values_at_percentiles, counts[0], 100_000, P3, out, um, hm)
    ref = HdrHistogram.decode(encode_v2(counts[0], layout))
    assert out.tolist() == [ref.get_value_at_percentile(p) for p in P3]


def test_package_record_value_100k(benchmark: Any) -> None:
    """Comparison figure: the ``hdrhistogram`` package, one ``record_value`` call per value."""
    layout = HdrLayout()
    values = np.rint(_latencies_us(N_PACKAGE, layout.highest_trackable_value)).astype(np.int64).tolist()

    def run() -> HdrHistogram:
        hist = HdrHistogram(1, layout.highest_trackable_value, 2)
        for v in values:
            hist.record_value(v)
        return hist

    hist = benchmark.pedantic(run, rounds=3, iterations=1)
    _rate(benchmark, N_PACKAGE)
    assert hist.get_total_count() == N_PACKAGE


def test_v2_encode_decode(benchmark: Any) -> None:
    layout = HdrLayout()
    um, hm, hi = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude, layout.highest_trackable_value
    counts = layout.zeros(1)
    vals = _latencies_us(100_000, hi)
    record_batch(
        counts, 0, vals, np.ones(vals.shape[0], np.int64), um, hm, hi, np.zeros(N_REJECT_REASONS, np.int64)
    )
    decode_v2(encode_v2(counts[0], layout))  # compile outside the timing

    def run() -> npt.NDArray[np.int64]:
        return decode_v2(encode_v2(counts[0], layout))[1]

    np.testing.assert_array_equal(benchmark(run), counts[0])
