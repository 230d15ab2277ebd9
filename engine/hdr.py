"""HDR histogram layouts and the V2 interchange codec (HdrHistogram's base64 ``"HISTF..."`` text).

:class:`HdrLayout` computes HdrHistogram's layout parameters exactly as the ``hdrhistogram`` package
(0.10.x, ``HdrHistogram.__init__``) and Java's ``AbstractHistogram.init`` do, including their floating
point ``log`` formulas. The counts of a histogram are a plain int64 array of ``layout.counts_len`` slots,
recorded and read by the kernels of :mod:`engine.kernels.hdr`.

:func:`encode_v2` and :func:`decode_v2` speak HdrHistogram's V2 compressed encoding, interoperable both
ways with ``HdrHistogram.encode()`` / ``HdrHistogram.decode()`` and with Java-written interval logs::

    base64( cookie 0x1c849314 (u32 BE) | length (u32 BE) | zlib(
        cookie 0x1c849313 | payload_len | normalizing_index_offset | significant_figures   (u32 BE each)
        | lowest_discernible_value | highest_trackable_value (u64 BE) | int_to_double_ratio (f64 BE)
        | counts: ZigZag LEB128-64b9B numbers, a run of n zero slots written as -n ) )

Bad input to :func:`decode_v2` raises :class:`engine.errors.DecodeError` whose ``reason`` is one of
``hdr_base64``, ``hdr_cookie``, ``hdr_length``, ``hdr_zlib``, ``hdr_header``, ``hdr_unsupported``,
``hdr_counts``, and whose message says what was expected and what was found.
"""

from __future__ import annotations

import base64
import binascii
import math
import operator
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.errors import DecodeError
from engine.kernels.hdr import (
    DECODE_OK,
    DECODE_TRUNCATED,
    ENCODE_MAX_COUNT,
    N_REJECT_REASONS,
    REJECT_BAD_WEIGHT,
    REJECT_NEGATIVE,
    REJECT_NOT_A_NUMBER,
    REJECT_TOO_HIGH,
    decode_counts_v2,
    encode_counts_v2,
    values_at_percentiles,
)

DEFAULT_HIGHEST_TRACKABLE_US = 3_600_000_000
"""Default highest trackable latency: one hour in microseconds."""
DEFAULT_SIGNIFICANT_FIGURES = 2
"""Default precision: 2 significant decimal digits (3,328 int64 slots from 1 us to 1 h)."""
MAX_HIGHEST_TRACKABLE_VALUE = (1 << 62) - 1
"""Largest ``highest_trackable_value`` supported (keeps every slot's value range inside int64)."""
MAX_DECODED_COUNTS_LEN = 1 << 22
"""Largest counts array :func:`decode_v2` allocates (4 Mi slots, 32 MiB), whatever a header claims."""

V2_ENCODING_COOKIE = 0x1C849313  # V2 base 0x1c849303 | word-size nibble 0x10 (hdrh codec.py)
V2_COMPRESSED_COOKIE = 0x1C849314  # V2 compressed base 0x1c849304 | 0x10
_COOKIE_BASE_MASK = ~0xF0 & 0xFFFF_FFFF
_V2_ENCODING_BASE = 0x1C849303
_V2_COMPRESSED_BASE = 0x1C849304
_EXTERNAL_HEADER = struct.Struct(">II")
_PAYLOAD_HEADER = struct.Struct(">IIIIQQd")  # 40 bytes, hdrh codec.PayloadHeader

_REASON_LABELS = {
    REJECT_NEGATIVE: "latency_negative",
    REJECT_TOO_HIGH: "latency_too_high",
    REJECT_NOT_A_NUMBER: "latency_missing",
    REJECT_BAD_WEIGHT: "weight_not_positive",
}
REJECT_REASONS: tuple[str, ...] = tuple(_REASON_LABELS[i] for i in range(N_REJECT_REASONS))
"""Rejection counter label of each ``rejected_out`` slot of the record kernels (index = ``REJECT_*``)."""


def _bucket_count(highest: int, sub_bucket_count: int, unit_magnitude: int) -> int:
    # hdrh histogram.get_bucket_count (Java AbstractHistogram.getBucketsNeededToCoverValue).
    smallest_untrackable_value = sub_bucket_count << unit_magnitude
    buckets_needed = 1
    while smallest_untrackable_value <= highest:
        if smallest_untrackable_value > MAX_HIGHEST_TRACKABLE_VALUE:  # sys.maxsize // 2 on 64-bit
            return buckets_needed + 1
        smallest_untrackable_value <<= 1
        buckets_needed += 1
    return buckets_needed


@dataclass(frozen=True, slots=True, kw_only=True)
class HdrLayout:
    """The counts layout of an HDR histogram, as HdrHistogram computes it.

    Parameters
    ----------
    highest_trackable_value
        Highest value to track, in the histogram's unit (microseconds for latencies); default 1 h.
        At least ``2 * lowest_discernible_value`` and at most ``MAX_HIGHEST_TRACKABLE_VALUE``.
    significant_figures
        Decimal digits of precision kept across the range, 1..5; default 2.
    lowest_discernible_value
        Smallest value told apart from 0, >= 1; default 1. Rounded down to a power of two
        (``unit_magnitude``) as HdrHistogram does.

    Attributes
    ----------
    unit_magnitude
        ``floor(log2(lowest_discernible_value))``.
    sub_bucket_half_count_magnitude
        ``ceil(log2(2 * 10**significant_figures)) - 1``.
    sub_bucket_count, sub_bucket_half_count, sub_bucket_mask, bucket_count
        As in HdrHistogram's ``AbstractHistogram``.
    counts_len
        Length of the counts array: ``(bucket_count + 1) * sub_bucket_half_count``.

    Raises
    ------
    ValueError
        When a parameter is out of range.
    """

    highest_trackable_value: int = DEFAULT_HIGHEST_TRACKABLE_US
    significant_figures: int = DEFAULT_SIGNIFICANT_FIGURES
    lowest_discernible_value: int = 1
    unit_magnitude: int = field(init=False)
    sub_bucket_half_count_magnitude: int = field(init=False)
    sub_bucket_count: int = field(init=False)
    sub_bucket_half_count: int = field(init=False)
    sub_bucket_mask: int = field(init=False)
    bucket_count: int = field(init=False)
    counts_len: int = field(init=False)

    def __post_init__(self) -> None:
        lowest = operator.index(self.lowest_discernible_value)
        highest = operator.index(self.highest_trackable_value)
        digits = operator.index(self.significant_figures)
        if not 1 <= digits <= 5:
            raise ValueError(f"significant_figures: expected an integer in 1..5, got {digits}")
        if lowest < 1:
            raise ValueError(f"lowest_discernible_value: expected an integer >= 1, got {lowest}")
        if highest < 2 * lowest:
            raise ValueError(
                f"highest_trackable_value: expected >= 2 * lowest_discernible_value = {2 * lowest}, "
                f"got {highest}"
            )
        if highest > MAX_HIGHEST_TRACKABLE_VALUE:
            raise ValueError(
                f"highest_trackable_value: expected <= {MAX_HIGHEST_TRACKABLE_VALUE}, got {highest}"
            )
        # The float formulas of hdrh HdrHistogram.__init__ / Java AbstractHistogram.init, kept verbatim:
        # exact integer log2 would differ from them for some inputs, and the layout must match.
        unit_magnitude = math.floor(math.log(lowest) / math.log(2))
        largest_value_single_unit_res = 2 * math.pow(10, digits)
        subb_count_mag = math.ceil(math.log(largest_value_single_unit_res) / math.log(2))
        half_mag = subb_count_mag - 1 if subb_count_mag > 1 else 0
        if unit_magnitude + half_mag > 61:
            raise ValueError(
                f"lowest_discernible_value {lowest} with {digits} significant figures needs more than 64 bits"
            )
        sub_bucket_count = int(math.pow(2, half_mag + 1))
        bucket_count = _bucket_count(highest, sub_bucket_count, unit_magnitude)
        set_ = object.__setattr__
        set_(self, "lowest_discernible_value", lowest)
        set_(self, "highest_trackable_value", highest)
        set_(self, "significant_figures", digits)
        set_(self, "unit_magnitude", unit_magnitude)
        set_(self, "sub_bucket_half_count_magnitude", half_mag)
        set_(self, "sub_bucket_count", sub_bucket_count)
        set_(self, "sub_bucket_half_count", sub_bucket_count // 2)
        set_(self, "sub_bucket_mask", (sub_bucket_count - 1) << unit_magnitude)
        set_(self, "bucket_count", bucket_count)
        set_(self, "counts_len", (bucket_count + 1) * (sub_bucket_count // 2))

    def zeros(self, n_rows: int | None = None) -> npt.NDArray[np.int64]:
        """An empty histogram (``n_rows`` None: shape ``(counts_len,)``) or ring ``(n_rows, counts_len)``."""
        if n_rows is None:
            return np.zeros(self.counts_len, np.int64)
        return np.zeros((n_rows, self.counts_len), np.int64)


def rejection_counts(rejected_out: npt.NDArray[np.int64]) -> dict[str, int]:
    """Non-zero entries of a record kernel's ``rejected_out`` array, keyed by :data:`REJECT_REASONS`."""
    return {REJECT_REASONS[i]: int(n) for i, n in enumerate(rejected_out[:N_REJECT_REASONS]) if n}


def _as_counts(counts: npt.ArrayLike, layout: HdrLayout) -> npt.NDArray[np.int64]:
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.shape[0] != layout.counts_len:
        raise ValueError(f"counts: expected a 1-D array of {layout.counts_len} slots, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"counts: expected an integer array, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > ENCODE_MAX_COUNT):
        raise ValueError(f"counts: expected every count in 0..{ENCODE_MAX_COUNT}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def percentile_values(
    counts: npt.ArrayLike, layout: HdrLayout, percentiles: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """Values at ``percentiles`` (each in 0..100) of one histogram, in the layout's unit.

    Same numbers as ``HdrHistogram.get_value_at_percentile``; 0 for an empty histogram.
    """
    arr = _as_counts(counts, layout)
    ps = np.ascontiguousarray(percentiles, dtype=np.float64).reshape(-1)
    if not np.all((ps >= 0.0) & (ps <= 100.0)):
        raise ValueError(f"percentiles: expected values in 0..100, got {ps.tolist()}")
    out = np.zeros(ps.shape[0], np.int64)
    values_at_percentiles(
        arr, int(arr.sum()), ps, out, layout.unit_magnitude, layout.sub_bucket_half_count_magnitude
    )
    return out


def encode_v2(counts: npt.ArrayLike, layout: HdrLayout) -> bytes:
    """Encode a histogram as HdrHistogram's base64 V2 text (what ``HdrHistogram.encode()`` returns).

    Parameters
    ----------
    counts
        1-D integer array of ``layout.counts_len`` counts, each in 0..2**62-1.
    layout
        The histogram's layout.

    Returns
    -------
    bytes
        ASCII base64, starting ``b"HISTF"``. Byte-identical to the package's ``encode()`` of the same
        histogram (same slot stream, default zlib level).

    Raises
    ------
    ValueError
        When ``counts`` has the wrong shape or dtype, or a count out of range.
    """
    arr = _as_counts(counts, layout)
    nonzero = np.flatnonzero(arr)
    # Only slots up to the last non-zero one are written (hdrh encode: index of max_value + 1).
    counts_limit = int(nonzero[-1]) + 1 if nonzero.size else 0
    buf = np.empty(9 * counts_limit, np.uint8)
    n_bytes = encode_counts_v2(arr, counts_limit, buf)
    header = _PAYLOAD_HEADER.pack(
        V2_ENCODING_COOKIE,
        n_bytes,
        0,  # normalizing_index_offset
        layout.significant_figures,
        layout.lowest_discernible_value,
        layout.highest_trackable_value,
        1.0,  # integer to double conversion ratio
    )
    compressed = zlib.compress(header + buf[:n_bytes].tobytes())
    return base64.b64encode(_EXTERNAL_HEADER.pack(V2_COMPRESSED_COOKIE, len(compressed)) + compressed)


def _unbase64(blob: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(blob, str):
        try:
            blob = blob.encode("ascii")
        except UnicodeEncodeError as exc:
            raise DecodeError(
                "hdr_base64", f"expected base64 text, got a non-ASCII character at offset {exc.start}"
            ) from None
    try:
        return base64.b64decode(bytes(blob).strip(), validate=True)
    except binascii.Error as exc:
        raise DecodeError("hdr_base64", f"expected base64 text: {exc}") from None


def _inflate(compressed: bytes) -> bytes:
    limit = _PAYLOAD_HEADER.size + 9 * MAX_DECODED_COUNTS_LEN
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, limit)
    except zlib.error as exc:
        raise DecodeError("hdr_zlib", f"expected a zlib stream: {exc}") from None
    if inflater.unconsumed_tail:
        raise DecodeError("hdr_length", f"expected at most {limit} bytes once inflated, got more")
    if not inflater.eof:
        raise DecodeError("hdr_zlib", f"truncated zlib stream ({len(compressed)} bytes, no end marker)")
    if inflater.unused_data:
        raise DecodeError("hdr_zlib", f"{len(inflater.unused_data)} unexpected bytes after the zlib stream")
    return data


def decode_v2(
    blob: bytes | bytearray | memoryview | str,
) -> tuple[HdrLayout, npt.NDArray[np.int64]]:
    """Decode HdrHistogram's base64 V2 compressed text (``"HISTF..."``).

    Accepts what ``HdrHistogram.encode()`` and Java's ``encodeIntoCompressedByteBuffer`` + base64
    produce (surrounding whitespace ignored).

    Returns
    -------
    (layout, counts)
        The layout from the blob's header and an int64 array of ``layout.counts_len`` counts.

    Raises
    ------
    DecodeError
        With ``reason`` ``hdr_base64`` (not base64), ``hdr_cookie`` (not a V2 histogram),
        ``hdr_length`` (a length field disagrees with the data), ``hdr_zlib`` (bad or truncated
        zlib stream), ``hdr_header`` (layout parameters out of range), ``hdr_unsupported``
        (normalizing offset, conversion ratio or size this decoder does not handle) or ``hdr_counts``
        (the counts stream is truncated or longer than the layout).
    """
    raw = _unbase64(blob)
    ext = _EXTERNAL_HEADER.size
    if len(raw) < ext:
        raise DecodeError("hdr_length", f"expected at least {ext} bytes once base64-decoded, got {len(raw)}")
    cookie, length = _EXTERNAL_HEADER.unpack_from(raw)
    if cookie & _COOKIE_BASE_MASK != _V2_COMPRESSED_BASE:
        raise DecodeError(
            "hdr_cookie",
            f"expected the V2 compressed cookie 0x{V2_COMPRESSED_COOKIE:08x}, got 0x{cookie:08x}",
        )
    if length != len(raw) - ext:
        raise DecodeError(
            "hdr_length", f"header says {length} compressed bytes, the blob holds {len(raw) - ext}"
        )
    data = _inflate(raw[ext:])

    hsize = _PAYLOAD_HEADER.size
    if len(data) < hsize:
        raise DecodeError("hdr_length", f"expected a {hsize}-byte payload header, got {len(data)} bytes")
    cookie, payload_len, normalizing_offset, digits, lowest, highest, ratio = _PAYLOAD_HEADER.unpack_from(
        data
    )
    if cookie & _COOKIE_BASE_MASK != _V2_ENCODING_BASE:
        raise DecodeError(
            "hdr_cookie", f"expected the V2 encoding cookie 0x{V2_ENCODING_COOKIE:08x}, got 0x{cookie:08x}"
        )
    if payload_len != len(data) - hsize:
        raise DecodeError(
            "hdr_length", f"header says {payload_len} bytes of counts, the payload holds {len(data) - hsize}"
        )
    if normalizing_offset != 0:
        raise DecodeError("hdr_unsupported", f"expected normalizing_index_offset 0, got {normalizing_offset}")
    if ratio != 1.0:
        raise DecodeError(
            "hdr_unsupported", f"expected an integer histogram (conversion ratio 1.0), got {ratio!r}"
        )
    try:
        layout = HdrLayout(
            highest_trackable_value=highest, significant_figures=digits, lowest_discernible_value=lowest
        )
    except ValueError as exc:
        raise DecodeError("hdr_header", str(exc)) from None
    if layout.counts_len > MAX_DECODED_COUNTS_LEN:
        raise DecodeError(
            "hdr_unsupported",
            f"expected at most {MAX_DECODED_COUNTS_LEN} slots, the header asks for {layout.counts_len}",
        )

    counts = np.zeros(layout.counts_len, np.int64)
    stream = np.frombuffer(data, np.uint8, offset=hsize)
    status, where = decode_counts_v2(stream, counts)
    if status == DECODE_TRUNCATED:
        raise DecodeError("hdr_counts", f"counts stream ends inside a number at byte {where}")
    if status != DECODE_OK:
        raise DecodeError(
            "hdr_counts",
            f"expected at most {layout.counts_len} slots, the counts stream goes past slot {where}",
        )
    return layout, counts
