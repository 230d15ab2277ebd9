"""HDR latency histogram kernels with HdrHistogram's exact counts layout.

The index math reproduces HdrHistogram's ``AbstractHistogram`` (Java) as implemented by the Python
``hdrhistogram`` package 0.10.x (``hdrh/histogram.py``), bit for bit: a histogram recorded here and one
recorded by ``HdrHistogram.record_value`` hold identical counts arrays, and
:func:`value_at_percentile` returns what ``HdrHistogram.get_value_at_percentile`` returns.

A layout is described by two int64 scalars, both attributes of :class:`engine.hdr.HdrLayout`:
``unit_magnitude`` (``floor(log2(lowest_discernible_value))``) and ``sub_bucket_half_count_magnitude``
(``ceil(log2(2 * 10**significant_figures)) - 1``); the counts array length is ``layout.counts_len``.
Counts are int64 arrays, one histogram per row of a 2-D array (a ring of time slots) or a 1-D array.

Usage (from Python or from another ``@njit`` function; the layout attributes are plain ints)::

    lay = HdrLayout(highest_trackable_value=3_600_000_000, significant_figures=2)
    hist = np.zeros((n_slots, lay.counts_len), np.int64); rejected = np.zeros(N_REJECT_REASONS, np.int64)
    um, hm = lay.unit_magnitude, lay.sub_bucket_half_count_magnitude
    record_batch(hist, slot, latency_us, weight, um, hm, lay.highest_trackable_value, rejected)
    total = ring_percentiles(hist, first_slot, n_used, np.array([50.0, 95.0, 99.0]), scratch, out, um, hm)

Recording rules (:func:`record_batch`, :func:`record_into`):

- float latencies in microseconds are rounded half up to an integer microsecond (1.5 -> 2, 2.4999 -> 2);
  integer arrays are taken as they are. (The package truncates floats with ``int()``; integer values
  give identical counts either way.)
- nothing is clamped or dropped silently: a NaN latency, a negative latency, a latency above
  ``highest_trackable_value`` (after rounding; +inf included) and a weight < 1 are not recorded and are
  counted, one per row, into ``rejected_out[REJECT_*]``; the kernel returns the number of rejected rows.
  The package accepts values up to the top of the last bucket (a little above
  ``highest_trackable_value``) and refuses larger ones by returning False; here the configured
  ``highest_trackable_value`` is the limit.
- value 0 is valid (index 0), as in HdrHistogram with ``lowest_discernible_value`` = 1.

Count-leading-zeros: nopython numba has no ``int.bit_length()``. :func:`bit_length` is a plain Python
function (``int.bit_length``) that numba replaces, through ``numba.extending.overload``, by LLVM's
``ctlz`` intrinsic. Under ``NUMBA_DISABLE_JIT=1`` the kernels are plain Python functions that call the
Python version, so both paths give the same results (the unit suite runs both ways).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

REJECT_NEGATIVE = 0
"""``rejected_out`` slot: latency < 0 (including -inf)."""
REJECT_TOO_HIGH = 1
"""``rejected_out`` slot: latency above ``highest_trackable_value`` after rounding (including +inf)."""
REJECT_NOT_A_NUMBER = 2
"""``rejected_out`` slot: latency is NaN (the event carries no latency)."""
REJECT_BAD_WEIGHT = 3
"""``rejected_out`` slot: weight < 1."""
N_REJECT_REASONS = 4
"""Length of the ``rejected_out`` array taken by the record kernels."""

_TWO_POW_63 = 9.223372036854775808e18  # first float that does not fit in int64
_INT64_MAX = 0x7FFF_FFFF_FFFF_FFFF

# Status codes of decode_counts_v2 (negative = error).
DECODE_OK = 0
DECODE_TRUNCATED = -1
"""The varint stream ends inside a value."""
DECODE_OVERRUN = -2
"""A count or a run of zeros lies beyond the end of the layout's counts array."""

ENCODE_MAX_COUNT = (1 << 62) - 1
"""Largest count the V2 ZigZag encoder accepts (ZigZag doubles the value into 63 bits)."""


# --------------------------------------------------------------------------------------------------
# count leading zeros
# --------------------------------------------------------------------------------------------------
@intrinsic
def _ctlz64(typingctx: Any, x: Any) -> tuple[Any, Callable[..., Any]]:
    """LLVM ``llvm.ctlz.i64(x, is_zero_poison=false)``: ctlz(0) == 64."""
    sig = types.int64(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64, ir.IntType(1)])
        fn = builder.module.declare_intrinsic("llvm.ctlz", [i64], fnty)
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])

    return sig, codegen


def bit_length(value: int) -> int:
    """Number of bits of a non-negative int64 (``int.bit_length``); 0 for 0.

    Plain Python; inside ``@njit`` code numba uses the ``ctlz`` overload below instead.
    """
    return int(value).bit_length()


@overload(bit_length)
def _bit_length_ol(value: Any) -> Callable[[Any], int] | None:
    if isinstance(value, types.Integer):

        def impl(value: Any) -> int:
            return 64 - _ctlz64(np.int64(value))  # type: ignore[call-arg]

        return impl
    return None


# --------------------------------------------------------------------------------------------------
# index math (HdrHistogram AbstractHistogram)
# --------------------------------------------------------------------------------------------------
@njit(cache=True)
def bucket_index(value: int, unit_magnitude: int, sub_bucket_half_count_magnitude: int) -> int:
    """HdrHistogram ``AbstractHistogram.getBucketIndex`` (hdrh ``_get_bucket_index``).

    ``pow2ceiling = 64 - clz(value | sub_bucket_mask)``, i.e. the bit length of ``value | mask``.
    """
    sub_bucket_mask = ((2 << sub_bucket_half_count_magnitude) - 1) << unit_magnitude
    pow2ceiling = bit_length(value | sub_bucket_mask)
    return pow2ceiling - unit_magnitude - (sub_bucket_half_count_magnitude + 1)


@njit(cache=True)
def counts_index(value: int, unit_magnitude: int, sub_bucket_half_count_magnitude: int) -> int:
    """Counts-array index of a value >= 0: HdrHistogram ``AbstractHistogram.countsArrayIndex``.

    ``getSubBucketIndex = value >> (bucket_index + unit_magnitude)``; the index is
    ``((bucket_index + 1) << sub_bucket_half_count_magnitude) + sub_bucket_index - sub_bucket_half_count``
    (hdrh ``_counts_index_for``). May be >= the layout's ``counts_len`` for values beyond its range.
    """
    b = bucket_index(value, unit_magnitude, sub_bucket_half_count_magnitude)
    sub = value >> (b + unit_magnitude)
    return ((b + 1) << sub_bucket_half_count_magnitude) + sub - (1 << sub_bucket_half_count_magnitude)


@njit(cache=True)
def value_from_index(index: int, unit_magnitude: int, sub_bucket_half_count_magnitude: int) -> int:
    """Lowest value of counts-array slot ``index``: HdrHistogram ``valueFromIndex`` (hdrh
    ``get_value_from_index``)."""
    half = 1 << sub_bucket_half_count_magnitude
    b = (index >> sub_bucket_half_count_magnitude) - 1
    sub = (index & (half - 1)) + half
    if b < 0:
        sub -= half
        b = 0
    return sub << (b + unit_magnitude)


@njit(cache=True)
def lowest_equivalent_value(value: int, unit_magnitude: int, sub_bucket_half_count_magnitude: int) -> int:
    """HdrHistogram ``lowestEquivalentValue`` (hdrh ``get_lowest_equivalent_value``)."""
    b = bucket_index(value, unit_magnitude, sub_bucket_half_count_magnitude)
    sub = value >> (b + unit_magnitude)
    return sub << (b + unit_magnitude)


@njit(cache=True)
def equivalent_range_size(value: int, unit_magnitude: int, sub_bucket_half_count_magnitude: int) -> int:
    """HdrHistogram ``sizeOfEquivalentValueRange`` (hdrh ``_hdr_size_of_equiv_value_range``)."""
    b = bucket_index(value, unit_magnitude, sub_bucket_half_count_magnitude)
    sub = value >> (b + unit_magnitude)
    if sub >= (2 << sub_bucket_half_count_magnitude):
        b += 1
    return 1 << (unit_magnitude + b)


@njit(cache=True)
def highest_equivalent_value(value: int, unit_magnitude: int, sub_bucket_half_count_magnitude: int) -> int:
    """HdrHistogram ``highestEquivalentValue`` (hdrh ``get_highest_equivalent_value``):
    ``lowestEquivalentValue + sizeOfEquivalentValueRange - 1``."""
    low = lowest_equivalent_value(value, unit_magnitude, sub_bucket_half_count_magnitude)
    return low + equivalent_range_size(value, unit_magnitude, sub_bucket_half_count_magnitude) - 1


# --------------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------------
@njit(cache=True)
def record_into(
    counts: npt.NDArray[np.int64],
    values_us: npt.NDArray[Any],
    weights: npt.NDArray[np.int64],
    unit_magnitude: int,
    sub_bucket_half_count_magnitude: int,
    highest_trackable_value: int,
    rejected_out: npt.NDArray[np.int64],
) -> int:
    """Add ``weights[i]`` at the slot of ``values_us[i]`` for every i, into a 1-D counts array.

    Parameters
    ----------
    counts
        int64[counts_len], one histogram; updated in place.
    values_us
        float64 or int64 latencies in microseconds (the layout's unit). Floats are rounded half up to
        an integer microsecond.
    weights
        int64 number of requests per value, same length as ``values_us``; each must be >= 1.
    unit_magnitude, sub_bucket_half_count_magnitude
        The layout (``HdrLayout`` attributes of the same names).
    highest_trackable_value
        Largest value recorded, in microseconds; larger ones are rejected as ``REJECT_TOO_HIGH``.
    rejected_out
        int64[N_REJECT_REASONS]; ``rejected_out[REJECT_*]`` is incremented by one per rejected row.

    Returns
    -------
    int
        Number of rows not recorded (the sum of what was added to ``rejected_out``).
    """
    n = values_us.shape[0]
    if weights.shape[0] != n:
        raise ValueError("record_into: values_us and weights differ in length")
    if rejected_out.shape[0] < N_REJECT_REASONS:
        raise ValueError("record_into: rejected_out is shorter than N_REJECT_REASONS")
    counts_len = counts.shape[0]
    n_rejected = 0
    for i in range(n):
        x = values_us[i]
        w = weights[i]
        reason = -1
        if w < 1:
            reason = REJECT_BAD_WEIGHT
        elif math.isnan(x):
            reason = REJECT_NOT_A_NUMBER
        elif x < 0:
            reason = REJECT_NEGATIVE
        elif x >= _TWO_POW_63:
            reason = REJECT_TOO_HIGH
        else:
            # Round half up to an integer microsecond; x - floor(x) is exact in binary floating point,
            # unlike floor(x + 0.5), which rounds wrongly above 2**52.
            v = math.floor(x)
            if x - v >= 0.5:
                v += 1
            if v > highest_trackable_value:
                reason = REJECT_TOO_HIGH
            else:
                idx = counts_index(v, unit_magnitude, sub_bucket_half_count_magnitude)
                if idx >= counts_len:
                    # A counts row narrower than the layout: refuse rather than write out of bounds.
                    reason = REJECT_TOO_HIGH
                else:
                    counts[idx] += w
        if reason >= 0:
            rejected_out[reason] += 1
            n_rejected += 1
    return n_rejected


@njit(cache=True)
def record_batch(
    counts: npt.NDArray[np.int64],
    row: int,
    values_us: npt.NDArray[Any],
    weights: npt.NDArray[np.int64],
    unit_magnitude: int,
    sub_bucket_half_count_magnitude: int,
    highest_trackable_value: int,
    rejected_out: npt.NDArray[np.int64],
) -> int:
    """:func:`record_into` row ``row`` of a 2-D counts array ``counts[n_slots, counts_len]``.

    Returns the number of rejected rows; see :func:`record_into` for the rules. For a single 1-D
    histogram call :func:`record_into` directly.
    """
    if row < 0 or row >= counts.shape[0]:
        raise IndexError("record_batch: row outside the counts array")
    return record_into(
        counts[row],
        values_us,
        weights,
        unit_magnitude,
        sub_bucket_half_count_magnitude,
        highest_trackable_value,
        rejected_out,
    )


# --------------------------------------------------------------------------------------------------
# reading: totals, percentiles, min / max / mean
# --------------------------------------------------------------------------------------------------
@njit(cache=True)
def total_count(counts: npt.NDArray[np.int64]) -> int:
    """Sum of a 1-D counts array."""
    total = 0
    for i in range(counts.shape[0]):
        total += counts[i]
    return total


@njit(cache=True)
def target_count_at_percentile(percentile: float, total: int) -> int:
    """Rank of a percentile: hdrh ``get_target_count_at_percentile``.

    ``max(1, int(min(percentile, 100) * total / 100 + 0.5))``: round half up, at least 1. (Java's
    ``getValueAtPercentile`` uses a ceil rule and can land one bucket higher.)
    """
    requested = min(percentile, 100.0)
    count_at_percentile = int((requested * total / 100) + 0.5)
    return max(count_at_percentile, 1)


@njit(cache=True)
def _value_at_resolved_index(
    index: int, percentile: float, unit_magnitude: int, sub_bucket_half_count_magnitude: int
) -> int:
    # hdrh get_value_at_percentile: highest equivalent value, except for percentile 0 (lowest).
    v = value_from_index(index, unit_magnitude, sub_bucket_half_count_magnitude)
    if percentile != 0:
        return highest_equivalent_value(v, unit_magnitude, sub_bucket_half_count_magnitude)
    return lowest_equivalent_value(v, unit_magnitude, sub_bucket_half_count_magnitude)


@njit(cache=True)
def value_at_percentile(
    counts: npt.NDArray[np.int64],
    total: int,
    percentile: float,
    unit_magnitude: int,
    sub_bucket_half_count_magnitude: int,
) -> int:
    """Value at ``percentile`` (0..100) of a 1-D histogram: hdrh ``HdrHistogram.get_value_at_percentile``.

    Walks the counts until the running sum reaches :func:`target_count_at_percentile` and returns the
    highest equivalent value of that slot (the lowest one for percentile 0). Returns 0 when the rank is
    never reached (empty histogram, or ``total`` larger than the sum of counts), as the package does, and
    -1 for a NaN percentile (the package raises there).
    """
    if math.isnan(percentile):
        return -1
    target = target_count_at_percentile(percentile, total)
    running = 0
    for index in range(counts.shape[0]):
        running += counts[index]
        if running >= target:
            return _value_at_resolved_index(
                index, percentile, unit_magnitude, sub_bucket_half_count_magnitude
            )
    return 0


@njit(cache=True)
def values_at_percentiles(
    counts: npt.NDArray[np.int64],
    total: int,
    percentiles: npt.NDArray[np.float64],
    out: npt.NDArray[np.int64],
    unit_magnitude: int,
    sub_bucket_half_count_magnitude: int,
) -> None:
    """:func:`value_at_percentile` for several percentiles (any order) in one pass over ``counts``.

    ``out[j]`` receives the value at ``percentiles[j]`` (0 when not reached, -1 for NaN).
    """
    k = percentiles.shape[0]
    if out.shape[0] < k:
        raise ValueError("values_at_percentiles: out is shorter than percentiles")
    targets = np.empty(k, np.int64)
    n_valid = 0
    for j in range(k):
        p = percentiles[j]
        if math.isnan(p):
            out[j] = -1
            targets[j] = -1  # sorted first, skipped below
        else:
            out[j] = 0
            targets[j] = target_count_at_percentile(p, total)
            n_valid += 1
    # Insertion sort of the (few) ranks: np.argsort would cost seconds of JIT compilation.
    order = np.empty(k, np.int64)
    for j in range(k):
        t = targets[j]
        m = j
        while m > 0 and targets[order[m - 1]] > t:
            order[m] = order[m - 1]
            m -= 1
        order[m] = j
    pos = k - n_valid  # first valid entry in sorted order
    running = 0
    for index in range(counts.shape[0]):
        if pos >= k:
            break
        running += counts[index]
        while pos < k and running >= targets[order[pos]]:
            j = order[pos]
            out[j] = _value_at_resolved_index(
                index, percentiles[j], unit_magnitude, sub_bucket_half_count_magnitude
            )
            pos += 1


@njit(cache=True)
def merge_rows(counts: npt.NDArray[np.int64], first_row: int, n_rows: int, out: npt.NDArray[np.int64]) -> int:
    """Sum ``n_rows`` rows of a ring ``counts[n_slots, counts_len]`` into ``out[counts_len]``.

    The rows are ``(first_row + k) % n_slots`` for k in 0..n_rows-1, so a window may wrap around the
    end of the ring; ``out`` is overwritten. Returns the total count of the merged histogram.
    """
    n_slots = counts.shape[0]
    width = counts.shape[1]
    if n_rows < 0 or n_rows > n_slots:
        raise ValueError("merge_rows: n_rows must be in 0..n_slots")
    if first_row < 0 or first_row >= n_slots:
        raise IndexError("merge_rows: first_row outside the counts array")
    if out.shape[0] != width:
        raise ValueError("merge_rows: out length differs from the counts rows")
    for i in range(width):
        out[i] = 0
    total = 0
    for k in range(n_rows):
        r = (first_row + k) % n_slots
        for i in range(width):
            c = counts[r, i]
            out[i] += c
            total += c
    return total


@njit(cache=True)
def ring_percentiles(
    counts: npt.NDArray[np.int64],
    first_row: int,
    n_rows: int,
    percentiles: npt.NDArray[np.float64],
    scratch: npt.NDArray[np.int64],
    out: npt.NDArray[np.int64],
    unit_magnitude: int,
    sub_bucket_half_count_magnitude: int,
) -> int:
    """Percentiles of the merge of ``n_rows`` ring rows starting at ``first_row`` (wrapping).

    Merges into ``scratch[counts_len]`` (:func:`merge_rows`), then fills ``out[j]`` with the value at
    ``percentiles[j]`` (:func:`values_at_percentiles`). Returns the merged total count (0 means no data:
    ``out`` is then all 0).
    """
    total = merge_rows(counts, first_row, n_rows, scratch)
    values_at_percentiles(scratch, total, percentiles, out, unit_magnitude, sub_bucket_half_count_magnitude)
    return total


@njit(cache=True)
def min_value(
    counts: npt.NDArray[np.int64], unit_magnitude: int, sub_bucket_half_count_magnitude: int
) -> int:
    """Lowest equivalent value of the first non-empty slot; 0 for an empty histogram (hdrh
    ``get_min_value``)."""
    for index in range(counts.shape[0]):
        if counts[index] != 0:
            return value_from_index(index, unit_magnitude, sub_bucket_half_count_magnitude)
    return 0


@njit(cache=True)
def max_value(
    counts: npt.NDArray[np.int64], unit_magnitude: int, sub_bucket_half_count_magnitude: int
) -> int:
    """Highest equivalent value of the last non-empty slot; 0 for an empty histogram (hdrh
    ``get_max_value``; equal to it for a decoded histogram and, with unit magnitude 0, always)."""
    for index in range(counts.shape[0] - 1, -1, -1):
        if counts[index] != 0:
            v = value_from_index(index, unit_magnitude, sub_bucket_half_count_magnitude)
            return highest_equivalent_value(v, unit_magnitude, sub_bucket_half_count_magnitude)
    return 0


@njit(cache=True)
def mean_value(
    counts: npt.NDArray[np.int64], unit_magnitude: int, sub_bucket_half_count_magnitude: int
) -> float:
    """Mean of the slot midpoints weighted by count: hdrh ``get_mean_value`` (0.0 when empty).

    Each slot stands for ``lowest + (size >> 1)`` (hdrh ``_hdr_median_equiv_value``). The sum is kept
    in int64, exact while sum(count * value) < 2**63 (e.g. 2.5e9 requests at 1 h).
    """
    total = 0
    weighted = 0
    for index in range(counts.shape[0]):
        c = counts[index]
        if c != 0:
            v = value_from_index(index, unit_magnitude, sub_bucket_half_count_magnitude)
            size = equivalent_range_size(v, unit_magnitude, sub_bucket_half_count_magnitude)
            weighted += c * (v + (size >> 1))
            total += c
    if total == 0:
        return 0.0
    return float(weighted) / total


# --------------------------------------------------------------------------------------------------
# V2 counts codec: ZigZag LEB128-64b9B, runs of zeros as negative numbers
# --------------------------------------------------------------------------------------------------
@njit(cache=True)
def _put_zigzag(buf: npt.NDArray[np.uint8], pos: int, value: int) -> int:
    # HdrHistogram ZigZagEncoding.putLong: LEB128 of (v << 1) ^ (v >> 63), at most 9 bytes, the 9th
    # carrying a full 8 bits. |value| < 2**62 here, so z is in [0, 2**63) and every shift is exact.
    z = (value << 1) ^ (value >> 63)
    for _ in range(8):
        if z < 0x80:
            buf[pos] = z
            return pos + 1
        buf[pos] = (z & 0x7F) | 0x80
        pos += 1
        z >>= 7
    buf[pos] = z
    return pos + 1


@njit(cache=True)
def encode_counts_v2(counts: npt.NDArray[np.int64], counts_limit: int, buf: npt.NDArray[np.uint8]) -> int:
    """Encode ``counts[:counts_limit]`` as the V2 varint stream into ``buf``; return its length in bytes.

    Same stream as the ``hdrhistogram`` package's C encoder (``pyhdrh.encode``): every count as a
    ZigZag LEB128-64b9B number, every run of zeros (a single zero included) as minus its length.
    ``buf`` needs ``9 * counts_limit`` bytes. Counts must be in 0..ENCODE_MAX_COUNT (checked by the
    caller, :func:`engine.hdr.encode_v2`).
    """
    if counts_limit > counts.shape[0] or counts_limit < 0:
        raise ValueError("encode_counts_v2: counts_limit outside the counts array")
    if buf.shape[0] < 9 * counts_limit:
        raise ValueError("encode_counts_v2: buf shorter than 9 bytes per count")
    pos = 0
    index = 0
    while index < counts_limit:
        c = counts[index]
        index += 1
        if c == 0:
            zeros = 1
            while index < counts_limit and counts[index] == 0:
                zeros += 1
                index += 1
            pos = _put_zigzag(buf, pos, -zeros)
        else:
            pos = _put_zigzag(buf, pos, c)
    return pos


@njit(cache=True)
def decode_counts_v2(src: npt.NDArray[np.uint8], counts: npt.NDArray[np.int64]) -> tuple[int, int]:
    """Decode a V2 varint stream (all of ``src``) into a zeroed ``counts`` array.

    HdrHistogram ``ZigZagEncoding.getLong`` (9th byte a full 8 bits) and
    ``AbstractHistogram.fillCountsArrayFromSourceBuffer``: a negative number skips that many zero slots,
    0 or a positive number is the count of the next slot.

    Returns
    -------
    (status, where)
        ``(DECODE_OK, slots_filled)``, or ``(DECODE_TRUNCATED, byte_offset)`` when the stream stops
        inside a number, or ``(DECODE_OVERRUN, slot_index)`` when a count or a run of zeros goes past
        ``counts.shape[0]``.
    """
    n = src.shape[0]
    counts_len = counts.shape[0]
    pos = 0
    dst = 0
    while pos < n:
        start = pos
        raw = 0
        shift = 0
        done = False
        while pos < n:
            b = int(src[pos])
            pos += 1
            if shift == 56:
                # 9th byte: all 8 bits; written as a signed shift so that bit 63 stays in int64.
                if b >= 0x80:
                    raw |= (b - 0x100) << 56
                else:
                    raw |= b << 56
                done = True
                break
            raw |= (b & 0x7F) << shift
            if b < 0x80:
                done = True
                break
            shift += 7
        if not done:
            return DECODE_TRUNCATED, start
        # Un-ZigZag with a logical shift: (raw >>> 1) ^ -(raw & 1).
        value = ((raw >> 1) & _INT64_MAX) ^ (-(raw & 1))
        if value < 0:
            if value < dst - counts_len:  # more zeros than slots left
                return DECODE_OVERRUN, dst
            dst -= value
        else:
            if dst >= counts_len:
                return DECODE_OVERRUN, dst
            counts[dst] = value
            dst += 1
    return DECODE_OK, dst
