"""HDR histogram kernels and the V2 codec, checked against the ``hdrhistogram`` package (``hdrh``).

The package is the reference: layouts, counts, percentiles, min/max/mean and V2 blobs must match it
exactly. Under ``NUMBA_DISABLE_JIT=1`` the same checks run on fewer values.
"""

from __future__ import annotations

import base64
import math
import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hdrh.histogram import HdrHistogram
from numba import njit

from engine.errors import DecodeError
from engine.hdr import (
    REJECT_REASONS,
    HdrLayout,
    decode_v2,
    encode_v2,
    percentile_values,
    rejection_counts,
)
from engine.kernels.hdr import (
    N_REJECT_REASONS,
    REJECT_BAD_WEIGHT,
    REJECT_NEGATIVE,
    REJECT_NOT_A_NUMBER,
    REJECT_TOO_HIGH,
    bit_length,
    counts_index,
    max_value,
    mean_value,
    merge_rows,
    min_value,
    record_batch,
    record_into,
    ring_percentiles,
    total_count,
    value_at_percentile,
    values_at_percentiles,
)

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
N_VALUES = 10**4 if NO_JIT else 10**6
SEED = 20_240_611
HOUR_US = 3_600_000_000
PERCENTILES = (0.0, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0)
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "hdr" / "jHiccup-2.0.7S.logV2.hlog"
# From the fixture's README (HdrHistogram_py test data): 62 histograms, 48,761 values.
FIXTURE_HISTOGRAMS = 62
FIXTURE_VALUES = 48_761

LAYOUT_FIELDS = (
    "unit_magnitude",
    "sub_bucket_half_count_magnitude",
    "sub_bucket_count",
    "sub_bucket_half_count",
    "sub_bucket_mask",
    "bucket_count",
    "counts_len",
)


# ------------------------------------------------------------------------------------------------
# reference builders and readers
# ------------------------------------------------------------------------------------------------
def package_counts(hist: HdrHistogram) -> npt.NDArray[np.int64]:
    return np.ctypeslib.as_array(hist.counts).astype(np.int64)


def package_histogram(
    layout: HdrLayout, values: npt.NDArray[np.int64], weights: npt.NDArray[np.int64] | None = None
) -> HdrHistogram:
    hist = HdrHistogram(
        layout.lowest_discernible_value, layout.highest_trackable_value, layout.significant_figures
    )
    if weights is None:
        for v in values.tolist():
            assert hist.record_value(v)
    else:
        for v, w in zip(values.tolist(), weights.tolist(), strict=True):
            assert hist.record_value(v, w)
    return hist


def record(
    layout: HdrLayout, values: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    vals = np.asarray(values)
    w = np.ones(vals.shape[0], np.int64) if weights is None else np.asarray(weights, np.int64)
    counts = layout.zeros()
    rejected = np.zeros(N_REJECT_REASONS, np.int64)
    n = record_into(
        counts,
        vals,
        w,
        layout.unit_magnitude,
        layout.sub_bucket_half_count_magnitude,
        layout.highest_trackable_value,
        rejected,
    )
    return counts, rejected, n


def latencies_us(rng: np.random.Generator, n: int, highest: int) -> npt.NDArray[np.int64]:
    """Latency-like integers in 1..highest: a lognormal body around 20 ms and a log-uniform spread."""
    body = rng.lognormal(mean=math.log(20_000.0), sigma=1.6, size=n - n // 4)
    spread = np.exp(rng.uniform(0.0, math.log(highest), size=n // 4))
    values = np.concatenate([body, spread])
    rng.shuffle(values)
    return np.clip(np.rint(values), 1, highest).astype(np.int64)


def edge_values(highest: int) -> npt.NDArray[np.int64]:
    edges = {0, 1, 2, highest, highest - 1}
    for k in range(1, 63):
        for v in ((1 << k) - 1, 1 << k, (1 << k) + 1):
            if v <= highest:
                edges.add(v)
    return np.array(sorted(edges), np.int64)


def round_half_up(x: float) -> int:
    """Obviously-correct reference: exact rational arithmetic."""
    return math.floor(Fraction(x) + Fraction(1, 2))


def fixture_blobs() -> list[str]:
    blobs = []
    for raw_line in FIXTURE.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", '"')):
            continue
        blobs.append(line.rsplit(",", 1)[-1])
    return blobs


def zigzag_leb128(value: int) -> bytes:
    """Reference ZigZag LEB128-64b9B encoder written from the format's definition."""
    z = (value << 1) ^ (value >> 63)
    z &= (1 << 64) - 1
    out = bytearray()
    for _ in range(8):
        if z < 0x80:
            out.append(z)
            return bytes(out)
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)  # 9th byte: a full 8 bits
    return bytes(out)


def make_blob(
    stream: bytes,
    *,
    lowest: int = 1,
    highest: int = HOUR_US,
    digits: int = 2,
    inner_cookie: int = 0x1C849313,
    outer_cookie: int = 0x1C849314,
    payload_len: int | None = None,
    normalizing_offset: int = 0,
    ratio: float = 1.0,
    outer_length_delta: int = 0,
    mangle_zlib: bytes | None = None,
) -> bytes:
    """A V2 blob built from the format's definition, with knobs to break each field."""
    plen = len(stream) if payload_len is None else payload_len
    header = struct.pack(">IIIIQQd", inner_cookie, plen, normalizing_offset, digits, lowest, highest, ratio)
    compressed = zlib.compress(header + stream) if mangle_zlib is None else mangle_zlib
    outer = struct.pack(">II", outer_cookie, len(compressed) + outer_length_delta)
    return base64.b64encode(outer + compressed)


@njit
def _bit_length_jitted(v: int) -> int:
    """``bit_length`` as the kernels see it (the ctlz path when the JIT is on)."""
    return bit_length(v)


# ------------------------------------------------------------------------------------------------
# (a) layouts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lowest", "highest", "digits"),
    [
        (1, HOUR_US, 2),
        (1, HOUR_US, 3),
        (1, HOUR_US, 1),
        (1, 2, 1),
        (1, 1000, 5),
        (1, (1 << 62) - 1, 3),
        (3, 100_000, 4),
        (1000, HOUR_US * 1000, 3),
        (20_000, HOUR_US * 1000, 2),
    ],
)
def test_layout_matches_package(lowest: int, highest: int, digits: int) -> None:
    layout = HdrLayout(
        lowest_discernible_value=lowest, highest_trackable_value=highest, significant_figures=digits
    )
    ref = HdrHistogram(lowest, highest, digits)
    for name in LAYOUT_FIELDS:
        assert getattr(layout, name) == getattr(ref, name), name
    assert layout.zeros().shape == (ref.counts_len,)
    assert layout.zeros(3).shape == (3, ref.counts_len)


def test_default_layout_is_one_hour_two_digits() -> None:
    layout = HdrLayout()
    assert (layout.lowest_discernible_value, layout.highest_trackable_value, layout.significant_figures) == (
        1,
        HOUR_US,
        2,
    )
    assert layout.counts_len == HdrHistogram(1, HOUR_US, 2).counts_len


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"significant_figures": 0}, r"significant_figures: expected an integer in 1\.\.5, got 0"),
        ({"significant_figures": 6}, r"significant_figures: expected an integer in 1\.\.5, got 6"),
        ({"lowest_discernible_value": 0}, r"lowest_discernible_value: expected an integer >= 1, got 0"),
        ({"highest_trackable_value": 1}, r"highest_trackable_value: expected >= 2 \* lowest"),
        ({"highest_trackable_value": 1 << 62}, r"highest_trackable_value: expected <= "),
        (
            {
                "lowest_discernible_value": 1 << 50,
                "highest_trackable_value": 1 << 61,
                "significant_figures": 5,
            },
            r"needs more than 64 bits",
        ),
    ],
)
def test_layout_rejects_bad_parameters(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HdrLayout(**kwargs)


@pytest.mark.parametrize("value", [0, 1, 2, 3, 255, 256, 1 << 31, (1 << 62) + 12345, (1 << 63) - 1])
def test_bit_length(value: int) -> None:
    assert _bit_length_jitted(np.int64(value)) == value.bit_length()
    assert bit_length(value) == value.bit_length()


# ------------------------------------------------------------------------------------------------
# (b) counts and percentiles against the package
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded() -> tuple[HdrLayout, npt.NDArray[np.int64], HdrHistogram]:
    print(f"seed={SEED} n={N_VALUES}")
    layout = HdrLayout()
    rng = np.random.default_rng(SEED)
    values = np.concatenate(
        [
            latencies_us(rng, N_VALUES, layout.highest_trackable_value),
            edge_values(layout.highest_trackable_value),
        ]
    )
    return layout, values, package_histogram(layout, values)


def test_counts_match_package(recorded: tuple[HdrLayout, npt.NDArray[np.int64], HdrHistogram]) -> None:
    layout, values, ref = recorded
    expected = package_counts(ref)
    for vals in (values, values.astype(np.float64)):
        counts, rejected, n = record(layout, vals)
        assert n == 0
        assert not rejected.any()
        np.testing.assert_array_equal(counts, expected)
    assert total_count(counts) == ref.get_total_count() == values.shape[0]


def test_percentiles_match_package(recorded: tuple[HdrLayout, npt.NDArray[np.int64], HdrHistogram]) -> None:
    layout, values, ref = recorded
    counts, _, _ = record(layout, values)
    um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    total = total_count(counts)
    expected = [ref.get_value_at_percentile(p) for p in PERCENTILES]
    assert [value_at_percentile(counts, total, p, um, hm) for p in PERCENTILES] == expected
    # several at once, in a shuffled order
    order = np.random.default_rng(SEED).permutation(len(PERCENTILES))
    ps = np.array(PERCENTILES)[order]
    out = np.full(len(ps), -7, np.int64)
    values_at_percentiles(counts, total, ps, out, um, hm)
    assert out.tolist() == [expected[i] for i in order]
    assert percentile_values(counts, layout, PERCENTILES).tolist() == expected
    # the package's sorted multi-percentile walk agrees too
    assert ref.get_percentile_to_value_dict(list(PERCENTILES)) == dict(
        zip(PERCENTILES, expected, strict=True)
    )


def test_min_max_mean_match_package(recorded: tuple[HdrLayout, npt.NDArray[np.int64], HdrHistogram]) -> None:
    layout, values, ref = recorded
    um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    counts, _, _ = record(layout, values)
    assert min_value(counts, um, hm) == ref.get_min_value() == 0  # the edge values include 0
    assert max_value(counts, um, hm) == ref.get_max_value()
    assert mean_value(counts, um, hm) == ref.get_mean_value()
    body = values[values > 1000][:5000]
    ref_body = package_histogram(layout, body)
    counts_body, _, _ = record(layout, body)
    assert min_value(counts_body, um, hm) == ref_body.get_min_value() > 1000 - 8
    assert max_value(counts_body, um, hm) == ref_body.get_max_value()
    assert mean_value(counts_body, um, hm) == ref_body.get_mean_value()


def test_empty_histogram_reads_like_package() -> None:
    layout = HdrLayout()
    ref = HdrHistogram(1, layout.highest_trackable_value, 2)
    counts = layout.zeros()
    um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    for p in PERCENTILES:
        assert value_at_percentile(counts, 0, p, um, hm) == ref.get_value_at_percentile(p) == 0
    assert (min_value(counts, um, hm), max_value(counts, um, hm)) == (
        ref.get_min_value(),
        ref.get_max_value(),
    )
    assert mean_value(counts, um, hm) == ref.get_mean_value() == 0.0


@pytest.mark.parametrize(
    ("lowest", "highest", "digits"), [(1, HOUR_US, 3), (20_000, HOUR_US * 1000, 2), (7, 10**7, 1)]
)
def test_other_layouts_match_package(lowest: int, highest: int, digits: int) -> None:
    seed = SEED + digits
    print(f"seed={seed}")
    layout = HdrLayout(
        lowest_discernible_value=lowest, highest_trackable_value=highest, significant_figures=digits
    )
    rng = np.random.default_rng(seed)
    values = np.concatenate([latencies_us(rng, min(N_VALUES, 50_000), highest), edge_values(highest)])
    ref = package_histogram(layout, values)
    counts, _, n = record(layout, values)
    assert n == 0
    np.testing.assert_array_equal(counts, package_counts(ref))
    um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    total = total_count(counts)
    assert [value_at_percentile(counts, total, p, um, hm) for p in PERCENTILES] == [
        ref.get_value_at_percentile(p) for p in PERCENTILES
    ]
    probes = values[:: max(1, values.shape[0] // 500)].tolist()
    assert [counts_index(v, um, hm) for v in probes] == [ref.get_counts_array_index(v) for v in probes]


def test_fractional_latencies_round_half_up() -> None:
    print(f"seed={SEED}")
    layout = HdrLayout()
    rng = np.random.default_rng(SEED)
    n = 2_000 if NO_JIT else 30_000
    base = latencies_us(rng, n, layout.highest_trackable_value - 1).astype(np.float64)
    fractions = rng.choice(np.array([0.0, 0.25, 0.4999999, 0.5, 0.5000001, 0.75, 0.999]), size=n)
    vals = np.concatenate(
        [base + fractions, [0.4, 0.5, 1.5, 2.5, 2.0**52 + 1.0, 2.0**53 - 1.0, 2.0**53 + 2.0, 1e15 + 0.5]]
    )
    layout_wide = HdrLayout(highest_trackable_value=1 << 60)
    for lay in (layout, layout_wide):
        keep = vals[vals <= lay.highest_trackable_value]
        expected_ints = np.array([round_half_up(x) for x in keep.tolist()], np.int64)
        ref = package_histogram(lay, expected_ints)
        counts, rejected, n_rej = record(lay, keep)
        assert n_rej == 0
        assert not rejected.any()
        np.testing.assert_array_equal(counts, package_counts(ref))


def test_ring_merge_and_percentiles_match_package() -> None:
    print(f"seed={SEED}")
    layout = HdrLayout()
    um, hm, hi = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude, layout.highest_trackable_value
    rng = np.random.default_rng(SEED)
    n_slots = 5
    ring = layout.zeros(n_slots)
    chunks = [latencies_us(rng, 2_000, hi) for _ in range(n_slots)]
    rejected = np.zeros(N_REJECT_REASONS, np.int64)
    for slot, chunk in enumerate(chunks):
        assert record_batch(ring, slot, chunk, np.ones(chunk.shape[0], np.int64), um, hm, hi, rejected) == 0
    ps = np.array([50.0, 95.0, 99.0])
    for first, n_rows in ((0, 5), (3, 4), (4, 1), (2, 0)):
        rows = [(first + k) % n_slots for k in range(n_rows)]
        ref = HdrHistogram(1, hi, 2)
        for r in rows:
            for v in chunks[r].tolist():
                ref.record_value(v)
        scratch = layout.zeros()
        out = np.zeros(3, np.int64)
        total = ring_percentiles(ring, first, n_rows, ps, scratch, out, um, hm)
        assert total == ref.get_total_count() == 2_000 * n_rows
        np.testing.assert_array_equal(scratch, package_counts(ref))
        assert out.tolist() == [ref.get_value_at_percentile(p) for p in ps]


def test_kernels_compose_inside_njit() -> None:
    """The engine calls the record and percentile kernels from its own @njit code."""

    @njit
    def minute_p99(
        ring: npt.NDArray[np.int64],
        slot: int,
        lat: npt.NDArray[np.float64],
        w: npt.NDArray[np.int64],
        um: int,
        hm: int,
        hi: int,
    ) -> tuple[int, int]:
        rejected = np.zeros(N_REJECT_REASONS, np.int64)
        n_rej = record_batch(ring, slot, lat, w, um, hm, hi, rejected)
        scratch = np.zeros(ring.shape[1], np.int64)
        out = np.zeros(1, np.int64)
        ring_percentiles(ring, slot, 1, np.array([99.0]), scratch, out, um, hm)
        return n_rej, out[0]

    layout = HdrLayout()
    rng = np.random.default_rng(SEED)
    lat = latencies_us(rng, 3_000, layout.highest_trackable_value)
    ring = layout.zeros(2)
    n_rej, p99 = minute_p99(
        ring,
        1,
        lat.astype(np.float64),
        np.ones(3_000, np.int64),
        layout.unit_magnitude,
        layout.sub_bucket_half_count_magnitude,
        layout.highest_trackable_value,
    )
    assert n_rej == 0
    assert p99 == package_histogram(layout, lat).get_value_at_percentile(99.0)
    assert not ring[0].any()


def test_nan_percentile_and_bad_percentile_values() -> None:
    layout = HdrLayout()
    counts, _, _ = record(layout, np.array([5, 7, 9], np.int64))
    um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    assert value_at_percentile(counts, 3, float("nan"), um, hm) == -1
    out = np.zeros(3, np.int64)
    values_at_percentiles(counts, 3, np.array([100.0, float("nan"), 0.0]), out, um, hm)
    assert out.tolist() == [9, -1, 5]
    with pytest.raises(ValueError, match=r"percentiles: expected values in 0\.\.100, got \[50\.0, 101\.0\]"):
        percentile_values(counts, layout, [50.0, 101.0])


def test_merge_rows_checks_its_arguments() -> None:
    ring = HdrLayout().zeros(3)
    out = HdrLayout().zeros()
    with pytest.raises(ValueError, match=r"n_rows must be in 0\.\.n_slots"):
        merge_rows(ring, 0, 4, out)
    with pytest.raises(IndexError, match="first_row outside"):
        merge_rows(ring, 3, 1, out)
    with pytest.raises(ValueError, match="out length differs"):
        merge_rows(ring, 0, 1, out[:-1])


# ------------------------------------------------------------------------------------------------
# (c) V2 codec interoperability
# ------------------------------------------------------------------------------------------------
def test_our_encoding_is_the_package_encoding(
    recorded: tuple[HdrLayout, npt.NDArray[np.int64], HdrHistogram],
) -> None:
    layout, values, ref = recorded
    counts, _, _ = record(layout, values)
    blob = encode_v2(counts, layout)
    assert blob.startswith(b"HISTF")
    assert blob == ref.encode()
    back = HdrHistogram.decode(blob)
    np.testing.assert_array_equal(package_counts(back), counts)
    assert back.get_total_count() == values.shape[0]
    assert [back.get_value_at_percentile(p) for p in PERCENTILES] == [
        ref.get_value_at_percentile(p) for p in PERCENTILES
    ]


def test_package_encoding_decodes_with_ours(
    recorded: tuple[HdrLayout, npt.NDArray[np.int64], HdrHistogram],
) -> None:
    layout, _, ref = recorded
    for blob in (ref.encode(), ref.encode().decode("ascii")):
        got_layout, counts = decode_v2(blob)
        assert got_layout == layout
        np.testing.assert_array_equal(counts, package_counts(ref))


@pytest.mark.parametrize(
    ("lowest", "highest", "digits", "counts_values"),
    [
        (1, HOUR_US, 2, []),  # empty histogram
        (1, HOUR_US, 3, [(0, 1), (1, 1), (3, 2), (HOUR_US, 1)]),
        (20_000, HOUR_US * 1000, 2, [(25_000, 300), (10**9, (1 << 62) - 1)]),  # 9-byte varint
        (1, 10**6, 5, [(999_999, 1 << 40), (5, 127), (6, 128), (7, 8191), (8, 8192)]),
    ],
)
def test_round_trips_both_ways(
    lowest: int, highest: int, digits: int, counts_values: list[tuple[int, int]]
) -> None:
    layout = HdrLayout(
        lowest_discernible_value=lowest, highest_trackable_value=highest, significant_figures=digits
    )
    ref = HdrHistogram(lowest, highest, digits)
    for v, c in counts_values:
        assert ref.record_value(v, c)
    counts = package_counts(ref)
    ours = encode_v2(counts, layout)
    assert ours == ref.encode()
    np.testing.assert_array_equal(package_counts(HdrHistogram.decode(ours)), counts)
    got_layout, got = decode_v2(ref.encode())
    assert got_layout == layout
    np.testing.assert_array_equal(got, counts)


def test_java_fixture_decodes_like_package() -> None:
    blobs = fixture_blobs()
    assert len(blobs) == FIXTURE_HISTOGRAMS
    grand_total = 0
    for blob in blobs:
        ref = HdrHistogram.decode(blob)
        layout, counts = decode_v2(blob)
        for name in LAYOUT_FIELDS:
            assert getattr(layout, name) == getattr(ref, name), name
        np.testing.assert_array_equal(counts, package_counts(ref))
        um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
        total = total_count(counts)
        assert total == ref.get_total_count()
        assert max_value(counts, um, hm) == ref.get_max_value()
        assert [value_at_percentile(counts, total, p, um, hm) for p in (50.0, 99.0, 100.0)] == [
            ref.get_value_at_percentile(p) for p in (50.0, 99.0, 100.0)
        ]
        # and back: what we write, the package reads
        np.testing.assert_array_equal(package_counts(HdrHistogram.decode(encode_v2(counts, layout))), counts)
        grand_total += total
    assert grand_total == FIXTURE_VALUES


def test_java_style_single_zero_decodes() -> None:
    """Java writes a lone empty slot as count 0 (the package as a run of -1): both are V2."""
    counts_in = [3, 0, 5, 0, 0, 0, 1]
    java_stream = b"".join(zigzag_leb128(c) for c in [3, 0, 5, -3, 1])
    blob = make_blob(java_stream)
    layout, counts = decode_v2(blob)
    assert layout == HdrLayout()
    assert counts[:7].tolist() == counts_in
    assert not counts[7:].any()
    np.testing.assert_array_equal(counts, package_counts(HdrHistogram.decode(blob)))


def test_encoded_stream_matches_reference_varints() -> None:
    print(f"seed={SEED}")
    rng = np.random.default_rng(SEED)
    layout = HdrLayout(highest_trackable_value=10**6, significant_figures=1)
    counts = np.where(
        rng.random(layout.counts_len) < 0.4,
        0,
        rng.integers(1, 1 << 62, size=layout.counts_len) >> rng.integers(0, 62, layout.counts_len),
    )
    counts[-1] = 1
    expected = bytearray()
    i = 0
    while i < layout.counts_len:
        if counts[i] == 0:
            j = i
            while j < layout.counts_len and counts[j] == 0:
                j += 1
            expected += zigzag_leb128(-(j - i))
            i = j
        else:
            expected += zigzag_leb128(int(counts[i]))
            i += 1
    blob = encode_v2(counts, layout)
    payload = zlib.decompress(base64.b64decode(blob)[8:])
    assert payload[40:] == bytes(expected)
    assert struct.unpack(">I", payload[4:8])[0] == len(expected)
    np.testing.assert_array_equal(decode_v2(blob)[1], counts)


def test_encode_rejects_bad_counts() -> None:
    layout = HdrLayout()
    with pytest.raises(ValueError, match=r"counts: expected a 1-D array of 3328 slots, got shape \(3327,\)"):
        encode_v2(np.zeros(layout.counts_len - 1, np.int64), layout)
    bad = layout.zeros()
    bad[3] = -1
    with pytest.raises(ValueError, match=r"counts: expected every count in 0\.\."):
        encode_v2(bad, layout)
    with pytest.raises(ValueError, match="expected an integer array, got dtype float64"):
        encode_v2(np.zeros(layout.counts_len), layout)


# ------------------------------------------------------------------------------------------------
# (d) corrupt input
# ------------------------------------------------------------------------------------------------
GOOD_STREAM = b"".join(zigzag_leb128(c) for c in [0, 4, -10, 7])


def _zlib_of_good_payload(extra: bytes = b"") -> bytes:
    header = struct.pack(">IIIIQQd", 0x1C849313, len(GOOD_STREAM), 0, 2, 1, HOUR_US, 1.0)
    return zlib.compress(header + GOOD_STREAM) + extra


@pytest.mark.parametrize(
    ("blob", "reason", "match"),
    [
        (b"HISTF!!!not base64", "hdr_base64", "expected base64 text"),
        ("HISTFAAAAEV42pNp\u00e9", "hdr_base64", "non-ASCII character at offset 16"),
        (base64.b64encode(b"\x1c\x84"), "hdr_length", "expected at least 8 bytes once base64-decoded, got 2"),
        (
            make_blob(GOOD_STREAM, outer_cookie=0x1C849312),
            "hdr_cookie",
            "expected the V2 compressed cookie 0x1c849314, got 0x1c849312",
        ),
        (make_blob(GOOD_STREAM, outer_length_delta=1), "hdr_length", "header says .* compressed bytes"),
        (
            make_blob(GOOD_STREAM, mangle_zlib=_zlib_of_good_payload()[:-6]),
            "hdr_zlib",
            "truncated zlib stream",
        ),
        (make_blob(GOOD_STREAM, mangle_zlib=b"\x00" * 30), "hdr_zlib", "expected a zlib stream"),
        (
            make_blob(GOOD_STREAM, mangle_zlib=_zlib_of_good_payload(b"xyz")),
            "hdr_zlib",
            "3 unexpected bytes after the zlib stream",
        ),
        (
            make_blob(GOOD_STREAM, mangle_zlib=zlib.compress(b"\x1c\x84\x93\x13" + b"\0" * 20)),
            "hdr_length",
            "expected a 40-byte payload header, got 24 bytes",
        ),
        (
            make_blob(GOOD_STREAM, inner_cookie=0x1C849301),
            "hdr_cookie",
            "expected the V2 encoding cookie 0x1c849313, got 0x1c849301",
        ),
        (make_blob(GOOD_STREAM, payload_len=99), "hdr_length", "header says 99 bytes of counts"),
        (make_blob(GOOD_STREAM, digits=0), "hdr_header", "significant_figures: expected an integer in 1..5"),
        (make_blob(GOOD_STREAM, lowest=1000, highest=1500), "hdr_header", "highest_trackable_value"),
        (make_blob(GOOD_STREAM, lowest=0), "hdr_header", "lowest_discernible_value"),
        (
            make_blob(GOOD_STREAM, normalizing_offset=4),
            "hdr_unsupported",
            "normalizing_index_offset 0, got 4",
        ),
        (make_blob(GOOD_STREAM, ratio=0.001), "hdr_unsupported", "conversion ratio 1.0"),
        (
            make_blob(GOOD_STREAM, digits=5, highest=(1 << 62) - 1),
            "hdr_unsupported",
            "expected at most 4194304",
        ),
        (make_blob(GOOD_STREAM + b"\x85"), "hdr_counts", f"ends inside a number at byte {len(GOOD_STREAM)}"),
        (make_blob(GOOD_STREAM + b"\xff" * 8), "hdr_counts", "ends inside a number"),
        (
            make_blob(zigzag_leb128(-3328) + zigzag_leb128(1)),
            "hdr_counts",
            "expected at most 3328 slots, the counts stream goes past slot 3328",
        ),
        (make_blob(zigzag_leb128(-3329)), "hdr_counts", "goes past slot 0"),
        (make_blob(zigzag_leb128(-(1 << 63))), "hdr_counts", "goes past slot 0"),
        (make_blob(b"".join(zigzag_leb128(1) for _ in range(3329))), "hdr_counts", "goes past slot 3328"),
    ],
)
def test_corrupt_blobs_raise_decode_error(blob: bytes | str, reason: str, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        decode_v2(blob)
    assert info.value.reason == reason


def test_run_of_zeros_up_to_the_last_slot_is_valid() -> None:
    layout, counts = decode_v2(make_blob(zigzag_leb128(5) + zigzag_leb128(-3327)))
    assert counts[0] == 5
    assert total_count(counts) == 5
    assert layout.counts_len == 3328


def test_mutated_blobs_decode_or_raise_decode_error() -> None:
    """Random corruption never escapes as anything but DecodeError."""
    print(f"seed={SEED}")
    rng = np.random.default_rng(SEED)
    source = fixture_blobs()[:8]
    n_ok = n_err = 0
    for _ in range(100 if NO_JIT else 400):
        raw = bytearray(base64.b64decode(source[int(rng.integers(len(source)))]))
        kind = int(rng.integers(3))
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(len(raw)))
                raw[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            del raw[int(rng.integers(len(raw))) :]
        else:
            # keep the outer header valid so that the damage reaches zlib and the counts stream
            body = bytearray(zlib.decompress(bytes(raw[8:])))
            pos = int(rng.integers(40, len(body))) if len(body) > 40 else 40
            body[pos : pos + 1] = bytes([int(rng.integers(256))]) * int(rng.integers(0, 3))
            body[4:8] = struct.pack(">I", len(body) - 40)
            comp = zlib.compress(bytes(body))
            raw = bytearray(struct.pack(">II", 0x1C849314, len(comp)) + comp)
        try:
            decode_v2(base64.b64encode(bytes(raw)))
            n_ok += 1
        except DecodeError as exc:
            assert exc.reason.startswith("hdr_")
            n_err += 1
    assert n_err > 0


# ------------------------------------------------------------------------------------------------
# (e) weights and rejections
# ------------------------------------------------------------------------------------------------
def test_weights_match_package_counts() -> None:
    print(f"seed={SEED}")
    layout = HdrLayout()
    rng = np.random.default_rng(SEED)
    n = 5_000
    values = latencies_us(rng, n, layout.highest_trackable_value)
    weights = rng.integers(1, 10_000, size=n)
    ref = package_histogram(layout, values, weights)
    counts, rejected, n_rej = record(layout, values.astype(np.float64), weights)
    assert n_rej == 0
    assert not rejected.any()
    np.testing.assert_array_equal(counts, package_counts(ref))
    assert total_count(counts) == int(weights.sum())
    total = total_count(counts)
    um, hm = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    assert [value_at_percentile(counts, total, p, um, hm) for p in PERCENTILES] == [
        ref.get_value_at_percentile(p) for p in PERCENTILES
    ]


def test_rejections_are_counted_by_reason() -> None:
    layout = HdrLayout()
    hi = layout.highest_trackable_value
    rows = [
        (10.0, 1, None),
        (float("nan"), 1, REJECT_NOT_A_NUMBER),
        (-1.0, 1, REJECT_NEGATIVE),
        (-0.25, 1, REJECT_NEGATIVE),
        (float("-inf"), 1, REJECT_NEGATIVE),
        (float("inf"), 1, REJECT_TOO_HIGH),
        (1e300, 1, REJECT_TOO_HIGH),
        (hi + 1.0, 1, REJECT_TOO_HIGH),
        (hi + 0.5, 1, REJECT_TOO_HIGH),  # rounds up past the limit
        (hi + 0.49, 7, None),  # rounds down onto it
        (0.0, 2, None),
        (-0.0, 1, None),
        (20.0, 0, REJECT_BAD_WEIGHT),
        (20.0, -5, REJECT_BAD_WEIGHT),
        (float("nan"), 0, REJECT_BAD_WEIGHT),
    ]
    values = np.array([r[0] for r in rows])
    weights = np.array([r[1] for r in rows], np.int64)
    counts, rejected, n_rej = record(layout, values, weights)
    expected = np.zeros(N_REJECT_REASONS, np.int64)
    for _, _, reason in rows:
        if reason is not None:
            expected[reason] += 1
    np.testing.assert_array_equal(rejected, expected)
    assert n_rej == sum(r[2] is not None for r in rows)
    accepted = [(v, w) for v, w, reason in rows if reason is None]
    ref = HdrHistogram(1, hi, 2)
    for v, w in accepted:
        ref.record_value(round_half_up(v), w)
    np.testing.assert_array_equal(counts, package_counts(ref))
    assert rejection_counts(rejected) == {
        "latency_missing": 1,
        "latency_negative": 3,
        "latency_too_high": 4,
        "weight_not_positive": 3,
    }
    assert set(REJECT_REASONS) == set(rejection_counts(np.ones(N_REJECT_REASONS, np.int64)))


def test_int_values_above_highest_are_rejected_where_package_accepts() -> None:
    """The package records up to the top of the last bucket; the configured limit is ours."""
    layout = HdrLayout()
    hi = layout.highest_trackable_value
    ref = HdrHistogram(1, hi, 2)
    assert ref.record_value(hi + 1)  # the package accepts it silently
    counts, rejected, n_rej = record(layout, np.array([hi, hi + 1, -3, 1 << 62, (1 << 63) - 1], np.int64))
    assert n_rej == 4
    assert rejected[REJECT_TOO_HIGH] == 3
    assert rejected[REJECT_NEGATIVE] == 1
    assert total_count(counts) == 1
    assert counts[counts_index(hi, layout.unit_magnitude, layout.sub_bucket_half_count_magnitude)] == 1


def test_narrow_counts_row_is_never_overrun() -> None:
    layout = HdrLayout()
    counts = np.zeros(100, np.int64)
    rejected = np.zeros(N_REJECT_REASONS, np.int64)
    n_rej = record_into(
        counts,
        np.array([5.0, 10**6], np.float64),
        np.ones(2, np.int64),
        layout.unit_magnitude,
        layout.sub_bucket_half_count_magnitude,
        layout.highest_trackable_value,
        rejected,
    )
    assert n_rej == 1
    assert rejected[REJECT_TOO_HIGH] == 1
    assert counts[5] == 1


def test_record_checks_its_arguments() -> None:
    layout = HdrLayout()
    ring = layout.zeros(2)
    rejected = np.zeros(N_REJECT_REASONS, np.int64)
    um, hm, hi = layout.unit_magnitude, layout.sub_bucket_half_count_magnitude, layout.highest_trackable_value
    with pytest.raises(IndexError, match="row outside the counts array"):
        record_batch(ring, 2, np.ones(3), np.ones(3, np.int64), um, hm, hi, rejected)
    with pytest.raises(ValueError, match="values_us and weights differ in length"):
        record_batch(ring, 0, np.ones(3), np.ones(2, np.int64), um, hm, hi, rejected)
    with pytest.raises(ValueError, match="rejected_out is shorter"):
        record_batch(ring, 0, np.ones(3), np.ones(3, np.int64), um, hm, hi, rejected[:2])
    assert not ring.any()
