"""Engine state as plain data: snapshot to (header, arrays) and restore, across config changes.

A snapshot holds numpy arrays only (no pickle) and a msgspec header with the clock, the key table,
the per-SLO fingerprints and counters. Restoring into an engine built from a different config keeps
the state of every SLO whose definition did not change (same fingerprint) and starts the others
fresh; :func:`restore` says which. Window sums are not stored: they are recomputed from the rings,
so that a snapshot cannot carry an inconsistent sum.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from engine.batch import EventBatch, EventKey
from engine.engine import Engine
from engine.errors import CheckpointError

FORMAT_VERSION = 1


class SnapshotHeader(msgspec.Struct, frozen=True):
    """Everything in a snapshot that is not a big array."""

    version: int
    step_ns: int
    first_instant_ns: int
    max_ts_ns: int | None
    res_s: list[int]
    ring_n: list[int]
    slo_names: list[str]
    slo_fingerprints: list[str]
    keys: list[tuple[str, str, str, list[tuple[str, str]]]]
    rejections: dict[str, int]
    events_ingested: int
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class RestoreReport(msgspec.Struct, frozen=True):
    """What a restore kept and what it started fresh."""

    kept: list[str]
    fresh: list[str]
    dropped: list[str]


def snapshot(engine: Engine, extra: dict[str, Any] | None = None,
             ) -> tuple[SnapshotHeader, dict[str, npt.NDArray[Any]]]:
    """The engine's state as a header and a dict of arrays (copies)."""
    p = engine.plan
    header = SnapshotHeader(
        version=FORMAT_VERSION,
        step_ns=p.step_ns,
        first_instant_ns=engine._first_instant_ns,
        max_ts_ns=engine.max_ts_ns,
        res_s=list(p.res_s),
        ring_n=[int(x) for x in p.ring_n],
        slo_names=[sp.slo.name for sp in p.slos],
        slo_fingerprints=[sp.fingerprint for sp in p.slos],
        keys=[(k.service, k.route, k.method, [tuple(x) for x in k.labels]) for k in engine.keys.keys],  # type: ignore[misc]
        rejections=dict(engine.rejections),
        events_ingested=engine.events_ingested,
        extra=extra or {},
    )
    return header, engine.state_arrays()


_ROW_ARRAYS = ("acc", "cum", "tier_since", "firing", "inactive_since", "fired_tier", "slo_rejects")


def restore(engine: Engine, header: SnapshotHeader, arrays: dict[str, npt.NDArray[Any]]) -> RestoreReport:
    """Load a snapshot into a freshly built ``engine`` (nothing ingested yet)."""
    if header.version != FORMAT_VERSION:
        raise CheckpointError(f"snapshot format {header.version}, expected {FORMAT_VERSION}")
    if engine.started or len(engine.keys):
        raise CheckpointError("restore needs a fresh engine")
    p = engine.plan
    if header.step_ns != p.step_ns:
        raise CheckpointError(f"evaluation step changed ({header.step_ns} ns -> {p.step_ns} ns): "
                              "state cannot be carried over")
    try:
        for service, route, method, labels in header.keys:
            engine.keys.intern(EventKey(service, route, method, tuple((a, b) for a, b in labels)))
        old_rows = {n: i for i, n in enumerate(header.slo_names)}
        kept, fresh = [], []
        mapping: list[tuple[int, int]] = []
        for sp in p.slos:
            i_old = old_rows.get(sp.slo.name)
            if i_old is not None and header.slo_fingerprints[i_old] == sp.fingerprint:
                kept.append(sp.slo.name)
                mapping.append((i_old, sp.row))
            else:
                fresh.append(sp.slo.name)
        new_names = {sp.slo.name for sp in p.slos}
        dropped = [n for n in header.slo_names if n not in new_names]
        engine.rejections.update(header.rejections)
        engine.events_ingested = header.events_ingested
        engine._max_ts_ns = header.max_ts_ns
        engine._counters[:] = arrays["counters"]
        engine._counted[:] = arrays["counters"]
        if header.first_instant_ns >= 0:
            engine._start(header.first_instant_ns - p.step_ns)
            engine._clock[:] = arrays["clock"]
            clock = int(engine._clock[0])
            # Heads hold the bucket of the last evaluated step (see engine.kernels.step).
            last_step_start = max(clock - 2 * p.step_ns, header.first_instant_ns - p.step_ns)
            for k in range(len(p.res_s)):
                engine._heads[k] = last_step_start // int(p.res_ns[k])
            _restore_rings(engine, header, arrays, mapping)
        for name in _ROW_ARRAYS:
            src = arrays[name]
            dst = getattr(engine, f"_{name}")
            for i_old, i_new in mapping:
                if src.ndim == 2 and dst.ndim == 2 and src.shape[1] != dst.shape[1]:
                    raise CheckpointError(f"{name}: shape {src.shape} does not fit {dst.shape}")
                dst[i_new] = src[i_old]
        pend = EventBatch(
            np.ascontiguousarray(arrays["pending_ts_ns"], np.int64),
            np.ascontiguousarray(arrays["pending_key"], np.int32),
            np.ascontiguousarray(arrays["pending_status"], np.int16),
            np.ascontiguousarray(arrays["pending_latency_us"], np.float64),
            np.ascontiguousarray(arrays["pending_weight"], np.int64),
        )
        engine._sync_keys()
        engine._pending = pend
        if "hist" in arrays:
            engine._restore_hist(arrays, mapping)
    except KeyError as e:
        raise CheckpointError(f"snapshot lacks array {e}") from None
    recompute_window_sums(engine)
    return RestoreReport(kept=kept, fresh=fresh, dropped=dropped)


def _restore_rings(engine: Engine, header: SnapshotHeader, arrays: dict[str, npt.NDArray[Any]],
                   mapping: list[tuple[int, int]]) -> None:
    p = engine.plan
    old = arrays["rings"]
    old_off = np.zeros(len(header.res_s), np.int64)
    if len(header.res_s) > 1:
        old_off[1:] = np.cumsum(header.ring_n)[:-1]
    if not mapping:
        return
    rows_old = np.array([a for a, _ in mapping])
    rows_new = np.array([b for _, b in mapping])
    for k, r in enumerate(p.res_s):
        if r not in header.res_s:
            continue
        ko = header.res_s.index(r)
        n_old, n_new = header.ring_n[ko], int(p.ring_n[k])
        head = int(engine._heads[k])
        for b in range(head - min(n_old, n_new) + 1, head + 1):
            src = old[old_off[ko] + b % n_old]
            engine._rings[int(p.ring_off[k]) + b % n_new, rows_new] = src[rows_old]


def recompute_window_sums(engine: Engine) -> None:
    """Rebuild every running window sum from the ring buckets it covers."""
    p = engine.plan
    engine._wsum[:] = 0
    for j in range(len(p.win_s)):
        k = int(p.win_res[j])
        head = int(engine._heads[k])
        n = int(p.win_n[j])
        off, ring = int(p.ring_off[k]), int(p.ring_n[k])
        for b in range(head - n + 1, head + 1):
            engine._wsum[:, j, :] += engine._rings[off + b % ring]
