"""Seeded scenarios for the strategy benchmark: per-second traffic with injected incidents.

Traffic is modelled as per-second counts (``total`` requests, ``bad`` of them bad), not single
events: every strategy takes weighted rows, and the exact reference is exact at one second.

A :class:`Family` shares one warm-up (history that fills every window before anything is scored;
the harness ingests it once and forks each strategy for every :class:`Member`). Requests are bad
for two independent causes: the baseline (``baseline_error``, optionally modulated per minute by a
lognormal factor of mean 1: bursty noise) and the incidents (each incident's own bad requests are
kept apart, for the ground truth).

Ground truth (:class:`Significance`): only injected incidents are incidents. An incident is
*significant for paging* when its own bad requests spend >= 2 % of the 30-day error budget within
some hour or >= 5 % within some 6 hours, *for a ticket* when >= 10 % within some 3 days; the budget
is ``B x mean rate x period``. An alert attributes to an incident when it triggers within
``[start, end + grace)`` (grace 6 h: the longest paging window can still hold the incident); every
other trigger is an alert outside incidents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bench.strategies.base import NS

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
H, DAY = 3600, 86400
ORIGIN_NS = 1_704_067_200 * NS  # 2024-01-01T00:00:00Z, a Monday at midnight


@dataclass(frozen=True, slots=True)
class Significance:
    """When an incident is significant (fractions of the period's error budget)."""

    page: tuple[tuple[int, float], ...] = ((H, 0.02), (6 * H, 0.05))
    ticket: tuple[tuple[int, float], ...] = ((3 * DAY, 0.10),)
    grace_s: int = 6 * H  # the longest paging window can still hold the incident that long

    def describe(self) -> list[str]:
        def fmt(rules: tuple[tuple[int, float], ...]) -> str:
            return " or ".join(f">= {f:.0%} of the budget within {w // H} h" for w, f in rules)

        return [
            "Incidents are the injected ones only; their own bad requests (apart from the baseline) decide.",
            f"Significant for paging: {fmt(self.page)}.",
            f"Significant for a ticket: {fmt(self.ticket)}.",
            "Budget = error budget B x mean request rate x SLO period (30 d unless stated).",
            f"An alert belongs to an incident when it triggers within [start, end + {self.grace_s // H} h)"
            " (the longest paging window can still hold it); other triggers are alerts outside incidents.",
        ]


@dataclass(frozen=True, slots=True)
class Incident:
    """A fault from ``start_s`` (offset from the member start) for ``duration_s``.

    ``error_ratio``: share of requests it fails (for a latency SLO: the share it makes slower than
    the threshold, baseline included). ``every_s``/``burst_s``: it fails only during bursts.
    """

    name: str
    start_s: int
    duration_s: int
    error_ratio: float
    every_s: int = 0
    burst_s: int = 0

    @property
    def end_s(self) -> int:
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class Traffic:
    """Request rate and baseline errors of a family."""

    rate_per_s: float = 100.0
    poisson: bool = True
    diurnal_amplitude: float = 0.0
    diurnal_peak_s: int = 14 * H
    baseline_error: float = 0.0
    noise_sigma: float = 0.0
    even_errors: bool = False  # bad = e x total spread evenly (no sampling noise)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Late and out-of-order arrival of the rows of a member (the warm-up arrives on time).

    Each second's requests split into an on-time row (arrives within ``ontime_max_s``), a delayed row
    (``delayed_share``, exponential delay of mean ``delayed_mean_s``) and a straggler row
    (``straggler_share``, uniform delay up to ``straggler_max_s``); the harness ingests by arrival
    in chunks of ``chunk_s`` and evaluates after each chunk up to its newest arrival less
    ``allowed_lateness_s`` (the engine's watermark rule).
    """

    delayed_share: float = 0.10
    delayed_mean_s: float = 60.0
    straggler_share: float = 0.01
    straggler_max_s: float = 900.0
    ontime_max_s: float = 2.0
    chunk_s: int = 60
    allowed_lateness_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    duration_s: int
    incidents: tuple[Incident, ...] = ()
    tags: dict[str, float] = field(default_factory=dict)
    rate_per_s: float | None = None  # overrides the family's rate


@dataclass(frozen=True, slots=True)
class Family:
    """Scenarios that share an SLO, a traffic model and a warm-up."""

    name: str
    description: str
    members: tuple[Member, ...]
    traffic: Traffic
    objective: float = 99.9
    period_s: int = 30 * DAY
    warmup_s: int = 5 * DAY  # fills Pyrra's 4d6h51m window; members start at midnight
    delivery: Delivery | None = None
    sli: str = "availability"
    significance: Significance = field(default_factory=Significance)
    origin_ns: int = ORIGIN_NS
    loaded: tuple[Segment, Segment] | None = None  # (warm-up, member) of replayed traffic

    @property
    def error_budget(self) -> float:
        return round(1.0 - self.objective / 100.0, 12)


@dataclass(slots=True)
class Segment:
    """Per-second counts of ``[start_s, start_s + n)`` (seconds after the origin) and their rows."""

    start_s: int
    total: I64
    bad: I64
    incident_bad: I64
    ts_ns: I64
    row_bad: I64
    row_total: I64
    arrival_ns: I64


# ---------------------------------------------------------------------------------------------
# the default grid and families

GRID_RATIOS = (1.0, 0.1, 0.02, 0.01, 0.005, 0.003, 0.002)
GRID_DURATIONS_S = (60, 600, H, 6 * H, DAY, 2 * DAY)
GRID_TAIL_S = 78 * H  # longer than approach 2's 36 h and approach 5's 3-day reset
QUICK_RATIOS = (1.0, 0.1, 0.02, 0.01, 0.003)
QUICK_DURATIONS_S = (600, H, DAY)
GRID_EXTRA = ((0.035, DAY), (0.001, 2 * DAY))
"""Beyond the grid: the Workbook's 35x burn (approach 4) and the 1x row of the detection table."""


def _dur(s: int) -> str:
    from engine.durations import format_duration

    return format_duration(s)


def grid_family(ratios: tuple[float, ...] = GRID_RATIOS,
                durations_s: tuple[int, ...] = GRID_DURATIONS_S, tail_s: int = GRID_TAIL_S,
                extra: tuple[tuple[float, int], ...] = GRID_EXTRA) -> Family:
    cells = [(e, d) for e in ratios for d in durations_s]
    cells += [c for c in extra if c not in cells]
    members = tuple(
        Member(f"{e:g}x{_dur(d)}", d + tail_s, (Incident(f"{e:.1%} for {_dur(d)}", 0, d, e),),
               {"error_ratio": e, "duration_s": d})
        for e, d in cells)
    return Family("grid", "incident grid: error ratio x duration, constant 100 req/s, errors spread "
                  "evenly, no background errors (the window arithmetic alone)", members,
                  Traffic(100.0, poisson=False, even_errors=True))


def default_families(quick: bool = False) -> list[Family]:
    """Every family of a default run (``quick``: a smaller grid and shorter tails)."""
    tail = 40 * H if quick else GRID_TAIL_S
    grid = grid_family(QUICK_RATIOS, QUICK_DURATIONS_S, tail) if quick else grid_family()
    scored = DAY if quick else 3 * DAY
    bursty = Traffic(100.0, baseline_error=0.001, noise_sigma=1.0)
    return [
        grid,
        Family("noise-at-budget", "100 req/s Poisson, background errors at the budget (0.1 %), "
               "bursty: lognormal per-minute factor, sigma 1", (Member("noise", scored),), bursty),
        Family("noise-below-budget", "as noise-at-budget at half the budget (0.05 %)",
               (Member("noise", scored),), Traffic(100.0, baseline_error=0.0005, noise_sigma=1.0)),
        Family("diurnal", "100 req/s mean, +-80 % daily swing (peak 14:00), 0.05 % bursty background; "
               "5 % errors for 1 h at the trough (02:00) or the peak (14:00)",
               (Member("trough", DAY, (Incident("5 % at 02:00", 2 * H, H, 0.05),)),
                Member("peak", DAY, (Incident("5 % at 14:00", 14 * H, H, 0.05),))),
               Traffic(100.0, diurnal_amplitude=0.8, baseline_error=0.0005, noise_sigma=1.0)),
        Family("low-traffic", "Poisson 1 req/min (and 10 req/min), 0.1 % background errors; "
               "outage (100 %) for 30 min",
               (Member("1/min", scored, (Incident("outage 30m", DAY // 2, 1800, 1.0),), rate_per_s=1 / 60),
                Member("10/min", scored, (Incident("outage 30m", DAY // 2, 1800, 1.0),),
                       rate_per_s=1 / 6)),
               Traffic(1 / 60, baseline_error=0.001)),
        Family("latency", "latency SLO 99 % under 300 ms, lognormal latency (median 40 ms, sigma 0.5) "
               "at 100 req/s; latency x5 for 1 h (21 % slow), x3 for 24 h (3.4 % slow)",
               (Member("x5 1h", DAY, (Incident("latency x5 for 1h", 2 * H, H, _slow_share(5.0)),)),
                Member("x3 24h", 2 * DAY, (Incident("latency x3 for 24h", 2 * H, DAY, _slow_share(3.0)),))),
               Traffic(100.0, baseline_error=_slow_share(1.0)), objective=99.0, sli="latency"),
        Family("spikes", "the Workbook's periodic spikes: 1 min of 25 % errors every 10 min for 10 h "
               "at 100 req/s (about 35 % of the budget); and 2 min of 25 % every 30 min for 10 h (23 %)",
               (Member("spikes", DAY, (Incident("spikes 25 % 1m/10m", H, 10 * H, 0.25, 600, 60),)),
                Member("spikes-30m", DAY, (Incident("spikes 25 % 2m/30m", H, 10 * H, 0.25, 1800, 120),))),
               Traffic(100.0, baseline_error=0.0002)),
        Family("late", "100 req/s, 10 % errors for 30 min; 10 % of each second's requests arrive late "
               "(exponential, mean 60 s), 1 % up to 15 min late, delivered every 60 s out of order",
               (Member("late", DAY, (Incident("10 % for 30m", 2 * H, 1800, 0.1),)),),
               Traffic(100.0, baseline_error=0.0002), delivery=Delivery()),
    ]


def _slow_share(multiplier: float, median_ms: float = 40.0, sigma: float = 0.5,
                threshold_ms: float = 300.0) -> float:
    """P(latency > threshold) for ``median * multiplier * exp(sigma N(0, 1))``."""
    z = math.log(threshold_ms / (median_ms * multiplier)) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# ---------------------------------------------------------------------------------------------
# drawing


def _rate(traffic: Traffic, rate: float, sec: I64) -> F64:
    if traffic.diurnal_amplitude == 0.0:
        return np.full(sec.size, rate)
    tod = (sec % DAY).astype(np.float64)
    return rate * (1.0 + traffic.diurnal_amplitude * np.cos(2 * np.pi * (tod - traffic.diurnal_peak_s) / DAY))


def _even(total: I64, ratio: F64) -> I64:
    """``ratio x total`` spread evenly: differences of floor(cumulative expected bad)."""
    cum = np.floor(np.cumsum(ratio * total) + 1e-9).astype(np.int64)
    return np.diff(cum, prepend=np.int64(0))


def incident_ratio(incidents: tuple[Incident, ...], rel_s: I64) -> F64:
    """Per second (offsets from the member start), the incidents' combined error ratio."""
    ok = np.ones(rel_s.size)
    for inc in incidents:
        active = (rel_s >= inc.start_s) & (rel_s < inc.end_s)
        if inc.every_s:
            active &= (rel_s - inc.start_s) % inc.every_s < inc.burst_s
        ok *= np.where(active, 1.0 - inc.error_ratio, 1.0)
    return 1.0 - ok


def draw(family: Family, start_s: int, n_s: int, rng: np.random.Generator, *,
         incidents: tuple[Incident, ...] = (), member_start_s: int = 0,
         rate_per_s: float | None = None, delivery: Delivery | None = None) -> Segment:
    """Counts of ``n_s`` seconds from ``start_s`` (seconds after the origin) and their rows."""
    tr = family.traffic
    sec = np.arange(start_s, start_s + n_s, dtype=np.int64)
    lam = _rate(tr, tr.rate_per_s if rate_per_s is None else rate_per_s, sec)
    total = rng.poisson(lam).astype(np.int64) if tr.poisson else np.round(lam).astype(np.int64)
    p_inc = incident_ratio(incidents, sec - member_start_s)
    p_base = np.full(n_s, tr.baseline_error)
    if tr.noise_sigma > 0 and tr.baseline_error > 0:
        n_min = -(-n_s // 60)
        f = np.exp(tr.noise_sigma * rng.standard_normal(n_min) - tr.noise_sigma ** 2 / 2)
        p_base = np.minimum(1.0, tr.baseline_error * np.repeat(f, 60)[:n_s])
    if tr.even_errors:
        inc_bad = _even(total, p_inc)
        base_bad = _even(total - inc_bad, p_base)
    else:
        inc_bad = rng.binomial(total, p_inc).astype(np.int64)
        base_bad = rng.binomial(total - inc_bad, p_base).astype(np.int64)
    bad = inc_bad + base_bad
    ts = (family.origin_ns + sec * NS).astype(np.int64)
    if delivery is None:
        return Segment(start_s, total, bad, inc_bad, ts, bad, total, ts)
    return _deliver(Segment(start_s, total, bad, inc_bad, ts, bad, total, ts), delivery, rng)


def _deliver(seg: Segment, d: Delivery, rng: np.random.Generator) -> Segment:
    n = seg.total.size
    shares = np.array([1.0 - d.delayed_share - d.straggler_share, d.delayed_share, d.straggler_share])
    split_t = rng.multinomial(seg.total, shares)            # (n, 3) requests per class
    split_b = np.zeros_like(split_t)
    # Bad requests are spread over the classes in proportion (hypergeometric per second).
    good = seg.total - seg.bad
    left_b, left_g = seg.bad.copy(), good.copy()
    for c in range(2):
        take = split_t[:, c]
        b = rng.hypergeometric(left_b, left_g, take).astype(np.int64)
        split_b[:, c] = b
        left_b -= b
        left_g -= take - b
    split_b[:, 2] = left_b
    delay_s = np.stack([rng.uniform(0, d.ontime_max_s, n), rng.exponential(d.delayed_mean_s, n),
                        rng.uniform(0, d.straggler_max_s, n)], axis=1)
    ts = np.repeat(seg.ts_ns, 3)
    arrival = ts + (delay_s.reshape(-1) * NS).astype(np.int64)
    keep = split_t.reshape(-1) > 0
    order = np.argsort(arrival[keep], kind="stable")
    seg.ts_ns = ts[keep][order]
    seg.row_bad = split_b.reshape(-1)[keep][order]
    seg.row_total = split_t.reshape(-1)[keep][order]
    seg.arrival_ns = arrival[keep][order]
    return seg


def family_seed(seed: int, family: str, part: int) -> np.random.Generator:
    """Generator for one part (0 = warm-up, i + 1 = member i) of a family: depends on the names only."""
    return np.random.default_rng([seed, *family.encode(), part])


def warmup(family: Family, seed: int) -> Segment:
    if family.loaded is not None:
        return family.loaded[0]
    return draw(family, 0, family.warmup_s, family_seed(seed, family.name, 0))


def member_segment(family: Family, index: int, seed: int) -> Segment:
    if family.loaded is not None:
        return family.loaded[1]
    m = family.members[index]
    return draw(family, family.warmup_s, m.duration_s, family_seed(seed, family.name, index + 1),
                incidents=m.incidents, member_start_s=family.warmup_s, rate_per_s=m.rate_per_s,
                delivery=family.delivery)


def budget_requests(family: Family, member: Member) -> float:
    """The period's error budget in requests: B x mean rate x period."""
    rate = family.traffic.rate_per_s if member.rate_per_s is None else member.rate_per_s
    return family.error_budget * rate * family.period_s


def max_window_sum(x: I64, window_s: int) -> int:
    """Largest sum of ``x`` over ``window_s`` consecutive seconds (all of ``x`` when shorter)."""
    cum = np.concatenate([[0], np.cumsum(x)])
    if x.size <= window_s:
        return int(cum[-1])
    return int((cum[window_s:] - cum[:-window_s]).max())


def significance(family: Family, member: Member, inc: Incident,
                 incident_bad: I64) -> tuple[bool, bool, float]:
    """(page-significant, ticket-significant, budget fraction spent) of one incident.

    ``incident_bad`` is the member's per-second incident-caused bad requests; seconds outside the
    incident (another incident's) are not counted.
    """
    own = incident_bad[inc.start_s: inc.end_s]
    budget = budget_requests(family, member)
    sig = family.significance
    page = any(max_window_sum(own, w) >= f * budget for w, f in sig.page)
    ticket = any(max_window_sum(own, w) >= f * budget for w, f in sig.ticket)
    return page, ticket, float(own.sum()) / budget


# ---------------------------------------------------------------------------------------------
# replayed traffic (--traffic FILE --incidents CSV)


def _parse_time_s(text: str, where: str) -> float:
    from engine.generate import parse_start_s

    try:
        return parse_start_s(text.strip())
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _read_counts_csv(path: str) -> tuple[F64, I64, I64]:
    import csv

    ts: list[float] = []
    bad: list[int] = []
    total: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"ts", "bad", "total"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: expected a header with ts, bad, total, missing {sorted(missing)}")
        for n, row in enumerate(reader, start=2):
            where = f"{path}:{n}"
            try:
                b, t = int(row["bad"]), int(row["total"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected whole numbers for bad and total, got "
                                 f"{row['bad']!r}, {row['total']!r}") from None
            if not 0 <= b <= t:
                raise ValueError(f"{where}: expected 0 <= bad <= total, got bad={b} total={t}")
            ts.append(_parse_time_s(row["ts"], where))
            bad.append(b)
            total.append(t)
    if not ts:
        raise ValueError(f"{path}: expected at least one row of counts, got none")
    return np.array(ts), np.array(bad, np.int64), np.array(total, np.int64)


def _read_events(path: str, config_path: str, slo_name: str | None) -> tuple[F64, I64, I64, dict[str, int]]:
    """Decode an events file and classify it for one SLO of a config (the engine's own rules)."""
    from engine.batch import KeyTable
    from engine.config import load_config
    from engine.events import EventDecoder
    from engine.io.files import FileSource
    from engine.plan import STATUS_BAD, STATUS_EXCLUDED, build_plan

    cfg = load_config(config_path)
    plan = build_plan(cfg)
    name = slo_name or cfg.slos[0].name
    if name not in plan.by_name:
        raise ValueError(f"{config_path}: expected an SLO named one of {sorted(plan.by_name)}, got {name!r}")
    row = plan.by_name[name]
    keys = KeyTable()
    dec = EventDecoder(cfg.events, keys)
    match: list[bool] = []
    counts: dict[str, int] = {}
    ts_l, bad_l, tot_l = [], [], []
    for buf in FileSource(path):
        batch, rej = dec.decode(buf)
        for reason, n in rej.items():
            counts[reason] = counts.get(reason, 0) + n
        match += [row in plan.matching_rows(k) for k in keys.keys[len(match):]]
        m = np.array(match, np.bool_)[batch.key] if len(batch) else np.zeros(0, np.bool_)
        counts["unmatched"] = counts.get("unmatched", 0) + int((~m).sum())
        st = np.clip(batch.status[m].astype(np.int64), 0, 599)
        cls = plan.status_class[row][st]
        lat = batch.latency_us[m]
        use = cls != STATUS_EXCLUDED
        counts["excluded_status"] = counts.get("excluded_status", 0) + int((~use).sum())
        if plan.is_latency[row]:
            has = ~np.isnan(lat)
            counts["no_latency"] = counts.get("no_latency", 0) + int((use & ~has).sum())
            use &= has
            is_bad = lat > plan.lat_thr_us[row]
        else:
            is_bad = cls == STATUS_BAD
        w = batch.weight[m][use]
        ts_l.append(batch.ts_ns[m][use] / NS)
        tot_l.append(w)
        bad_l.append(np.where(is_bad[use], w, 0))
    if not ts_l or sum(a.size for a in ts_l) == 0:
        raise ValueError(f"{path}: no event matched SLO {name!r} (rejections: {counts})")
    return np.concatenate(ts_l), np.concatenate(bad_l), np.concatenate(tot_l), counts


def traffic_family(path: str, incidents_csv: str, *, objective: float = 99.9, period_s: int = 30 * DAY,
                   config_path: str | None = None,
                   slo_name: str | None = None) -> tuple[Family, dict[str, int]]:
    """A family of one member from replayed traffic and a CSV of incident intervals.

    ``path``: a CSV of counts (header ``ts,bad,total``; ts RFC 3339 or epoch seconds) or, with
    ``config_path``, an events file classified for one SLO of that config (objective and period
    then come from the SLO). ``incidents_csv``: header ``start,end[,name]``. There is no warm-up:
    windows fill as the data comes. An incident's own bad requests are its bad requests beyond the
    baseline ratio measured outside every incident. Returns the family and rejected records by reason.
    """
    import csv

    from engine.config import objective_percent
    from engine.config import period_s as slo_period_s

    rejected: dict[str, int] = {}
    if config_path is not None:
        from engine.config import load_config

        ts, bad, total, rejected = _read_events(path, config_path, slo_name)
        slo = load_config(config_path).slo(slo_name) if slo_name else load_config(config_path).slos[0]
        objective, period_s = objective_percent(slo), slo_period_s(slo)
    else:
        ts, bad, total = _read_counts_csv(path)
    origin_s = math.floor(ts.min() / H) * H
    sec = np.floor(ts - origin_s).astype(np.int64)
    n_s = -(-(int(sec.max()) + 1) // 60) * 60
    tot_s = np.bincount(sec, weights=total, minlength=n_s).astype(np.int64)
    bad_s = np.bincount(sec, weights=bad, minlength=n_s).astype(np.int64)
    incidents: list[Incident] = []
    with open(incidents_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"start", "end"} <= set(reader.fieldnames or []):
            raise ValueError(f"{incidents_csv}: expected a header with start, end[, name]")
        for n, row in enumerate(reader, start=2):
            where = f"{incidents_csv}:{n}"
            a = int(_parse_time_s(row["start"], where) - origin_s)
            b = int(_parse_time_s(row["end"], where) - origin_s)
            if not 0 <= a < b <= n_s:
                raise ValueError(f"{where}: expected start < end inside the traffic "
                                 f"({n_s} s from {origin_s}), got {row['start']!r}..{row['end']!r}")
            incidents.append(Incident(row.get("name") or f"incident {n - 1}", a, b - a, math.nan))
    inside = incident_ratio(tuple(replace_ratio(i) for i in incidents), np.arange(n_s)) > 0
    base = bad_s[~inside].sum() / max(int(tot_s[~inside].sum()), 1)
    inc_bad = np.where(inside, np.maximum(np.round(bad_s - base * tot_s), 0), 0).astype(np.int64)
    origin_ns = origin_s * NS
    nz = np.flatnonzero(tot_s)
    rows_ts = origin_ns + nz * NS
    member_seg = Segment(0, tot_s, bad_s, inc_bad, rows_ts, bad_s[nz], tot_s[nz], rows_ts)
    empty = np.zeros(0, np.int64)
    warm = Segment(0, empty, empty, empty, empty, empty, empty, empty)
    mean_rate = float(tot_s.sum()) / n_s
    fam = Family(f"traffic:{path}", f"replayed traffic from {path}, {len(incidents)} incidents from "
                 f"{incidents_csv}", (Member("replay", n_s, tuple(incidents), rate_per_s=mean_rate),),
                 Traffic(mean_rate), objective=objective, period_s=period_s, warmup_s=0,
                 origin_ns=origin_ns, loaded=(warm, member_seg))
    return fam, rejected


def replace_ratio(inc: Incident) -> Incident:
    """The same interval failing every request (to mark where an incident is active)."""
    return Incident(inc.name, inc.start_s, inc.duration_s, 1.0, inc.every_s, inc.burst_s)
