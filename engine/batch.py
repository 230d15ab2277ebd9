"""Columnar event batches and the key table that maps event identities to small integers.

Every driver (daemon, backtest, bench) hands the engine an :class:`EventBatch`: five numpy arrays of
equal length, one row per request event (or per pre-aggregated group of requests when ``weight`` > 1).
The ``key`` column refers to a :class:`KeyTable` row, so that string matching happens once per distinct
(service, route, method, labels) and never per event.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

NO_STATUS = 0
"""Status value of an event that carries no HTTP-like status (latency-only sources)."""


@dataclass(frozen=True, slots=True)
class EventKey:
    """What an event says about where it comes from; SLO matchers look only at this."""

    service: str
    route: str = ""
    method: str = ""
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class KeyTable:
    """Interns :class:`EventKey` values as dense int32 ids (0, 1, 2, ...).

    The table only grows; ids are stable for the life of an engine and are saved in checkpoints.
    """

    keys: list[EventKey] = field(default_factory=list)
    _ids: dict[EventKey, int] = field(default_factory=dict)

    def intern(self, key: EventKey) -> int:
        """Return the id of ``key``, adding it if it is new."""
        found = self._ids.get(key)
        if found is not None:
            return found
        new_id = len(self.keys)
        self.keys.append(key)
        self._ids[key] = new_id
        return new_id

    def intern_parts(
        self, service: str, route: str = "", method: str = "", labels: tuple[tuple[str, str], ...] = ()
    ) -> int:
        """Shorthand for ``intern(EventKey(...))``."""
        return self.intern(EventKey(service, route, method, labels))

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """A columnar batch of request events.

    Attributes
    ----------
    ts_ns
        int64 event time in nanoseconds since the Unix epoch.
    key
        int32 row of the :class:`KeyTable` the batch was decoded against.
    status
        int16 HTTP-like status code (100-599), or ``NO_STATUS`` (0) when the source has none.
    latency_us
        float64 request latency in microseconds; NaN when the event carries no latency.
    weight
        int64 number of requests the row stands for (1 for single events), always >= 1.
    """

    ts_ns: npt.NDArray[np.int64]
    key: npt.NDArray[np.int32]
    status: npt.NDArray[np.int16]
    latency_us: npt.NDArray[np.float64]
    weight: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def empty(cls) -> EventBatch:
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.int32),
            np.empty(0, np.int16),
            np.empty(0, np.float64),
            np.empty(0, np.int64),
        )

    @classmethod
    def from_arrays(
        cls,
        ts_ns: npt.ArrayLike,
        key: npt.ArrayLike,
        status: npt.ArrayLike,
        latency_us: npt.ArrayLike | None = None,
        weight: npt.ArrayLike | None = None,
    ) -> EventBatch:
        """Build a batch with the right dtypes; ``latency_us`` defaults to NaN and ``weight`` to 1."""
        ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
        n = ts.shape[0]
        lat = (
            np.full(n, np.nan, np.float64)
            if latency_us is None
            else np.ascontiguousarray(latency_us, dtype=np.float64)
        )
        w = np.ones(n, np.int64) if weight is None else np.ascontiguousarray(weight, dtype=np.int64)
        k = np.ascontiguousarray(key, dtype=np.int32)
        st = np.ascontiguousarray(status, dtype=np.int16)
        lengths = {"ts_ns": n, "key": k.shape[0], "status": st.shape[0], "latency_us": lat.shape[0],
                   "weight": w.shape[0]}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"EventBatch columns differ in length: {lengths}")
        return cls(
            ts,
            k,
            st,
            lat,
            w,
        )

    def take(self, index: npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_] | slice) -> EventBatch:
        """Rows selected by ``index`` (a slice, an index array or a boolean mask)."""
        return EventBatch(
            np.ascontiguousarray(self.ts_ns[index]),
            np.ascontiguousarray(self.key[index]),
            np.ascontiguousarray(self.status[index]),
            np.ascontiguousarray(self.latency_us[index]),
            np.ascontiguousarray(self.weight[index]),
        )

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        if not batches:
            return EventBatch.empty()
        if len(batches) == 1:
            return batches[0]
        return EventBatch(
            np.concatenate([b.ts_ns for b in batches]),
            np.concatenate([b.key for b in batches]),
            np.concatenate([b.status for b in batches]),
            np.concatenate([b.latency_us for b in batches]),
            np.concatenate([b.weight for b in batches]),
        )


class Rejections(Counter[str]):
    """Counts of rejected records by reason (``malformed_json``, ``missing_ts``, ``too_late`` ...).

    Nothing is dropped silently: every record that does not become an event lands here.
    """

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self[reason] += n
