"""The backtest report: self-contained HTML, real PNG plots, firing spans, summary numbers."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from engine import report
from engine.alerts import AlertEvent, dedup_key
from engine.series import BacktestResult, SloSeries
from engine.windows import AlertTier

T0 = 1_704_067_200.0
LABELS = ["5m", "30m", "1h", "6h"]
TIERS = [
    AlertTier("page_quick", "page", 3600, 300, 14.4),
    AlertTier("page_slow", "page", 21600, 1800, 6.0),
    AlertTier("ticket_slow", "ticket", 21600, 1800, 1.0),
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _alert(slo: str, severity: str, action: str, ts: float, tier: str = "page_quick") -> AlertEvent:
    return AlertEvent(slo=slo, severity=severity, action=action, ts=ts, tier=tier,
                      burn_rates={"5m": 20.0, "1h": None}, budget_remaining=0.4,
                      dedup_key=dedup_key(slo, severity))


def _series(name: str = "checkout-availability", *, seed: int = 0, n: int = 60,
            events: list[AlertEvent] | None = None, nan_windows: tuple[int, ...] = (),
            threshold_ms: float | None = None) -> SloSeries:
    rng = np.random.default_rng(seed)
    burn = rng.lognormal(-1.0, 1.0, (n, len(LABELS)))
    burn[n // 3: n // 3 + 5, :3] = 40.0
    burn[:3, 0] = 0.0
    for j in nan_windows:
        burn[:, j] = np.nan
    lat = np.sort(rng.lognormal(3.5, 0.4, (n, 3)), axis=1)
    budget = np.concatenate([np.linspace(1.0, 0.25, n - 2), [np.nan, np.nan]])
    return SloSeries(slo=name, objective=99.9, period_s=30 * 86400, window_labels=list(LABELS),
                     ts_s=T0 + 60.0 * np.arange(n), burn=burn, budget_remaining=budget, latency_ms=lat,
                     tiers=list(TIERS), events=events or [], totals={"events": 120_000, "bad": 360},
                     threshold_ms=threshold_ms)


def _events(slo: str = "checkout-availability") -> list[AlertEvent]:
    return [
        _alert(slo, "page", "trigger", T0 + 100),
        _alert(slo, "page", "trigger", T0 + 200),  # still firing: the same alert, not a new one
        _alert(slo, "page", "resolve", T0 + 400),
        _alert(slo, "page", "resolve", T0 + 500),  # nothing firing: closes nothing
        _alert(slo, "page", "trigger", T0 + 1000),
        _alert(slo, "ticket", "trigger", T0 + 1500, "ticket_slow"),
        _alert(slo, "page", "resolve", T0 + 1600),
    ]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.unbalanced: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag == "tr":
            self.rows += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.unbalanced.append(tag)


def _parse(index: Path) -> _Page:
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    assert not page.unbalanced and not page.stack, (page.unbalanced, page.stack)
    return page


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    img = imread(path)  # RGBA floats in [0, 1]
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] == 4
    packed = np.ascontiguousarray(np.round(img * 255).astype(np.uint8)).view(np.uint32)
    colours = np.unique(packed)
    assert len(colours) > 10, f"{path.name}: looks blank ({len(colours)} colours)"


def test_report_is_self_contained_html_with_real_pngs(tmp_path: Path) -> None:
    series = [_series(events=_events(), threshold_ms=None),
              _series("checkout-latency", seed=1, threshold_ms=300.0)]
    result = BacktestResult(series=series, inputs=["demo.ndjson.zst"], rejections={"decode_error": 3},
                            wall_s=1.25, events_per_s=96_000.0, events=120_003)
    index = report.write_report(result, tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    page = _parse(index)
    assert len(page.images) == 3 * len(series)
    assert len(set(page.images)) == len(page.images)
    for src in page.images:
        assert "/" not in src and ":" not in src, src  # relative, next to the page
        _check_png(index.parent / src)
    assert not page.tags & {"script", "link", "iframe", "object"}
    text = index.read_text(encoding="utf-8")
    assert "decode_error" in text and "demo.ndjson.zst" in text and "120,003" in text
    assert "threshold" not in text or "latency &le; 300 ms" in text
    # Timeline rows: 7 transitions of the first SLO; the second has none.
    assert text.count('<span class="page">') + text.count('<span class="ticket">') == 7
    assert "still firing at the end" in text


def test_shaded_spans_are_the_alerts() -> None:
    s = _series(events=_events())
    fig = report.plot_burn(s)
    spans = [a for a in fig.axes[0].get_children() if (a.get_gid() or "").startswith("firing-")]
    assert sorted(a.get_gid() for a in spans) == ["firing-page", "firing-page", "firing-ticket"]
    summary = report.summarize(s)
    assert (summary.page_alerts, summary.ticket_alerts) == (2, 1)
    # The open ticket extends to the end of the run: the last sample, 59 minutes after T0.
    got = report.firing_spans(s.events, s.end_s or 0.0)
    assert [(x.severity, x.start_s - T0, x.end_s - T0, x.open) for x in got] == [
        ("page", 100, 400, False), ("page", 1000, 1600, False), ("ticket", 1500, 59 * 60, True)]


def test_time_firing_is_the_union_of_spans() -> None:
    events = _events()
    end = T0 + 3000
    assert report.time_firing_s(events, end, "page") == pytest.approx(300 + 600)
    assert report.time_firing_s(events, end, "ticket") == pytest.approx(1500)
    # page [100, 400] and [1000, 1600] with ticket [1500, 3000]: 300 + 2000 s.
    assert report.time_firing_s(events, end) == pytest.approx(2300)
    assert report.time_firing_s([], end) == 0.0
    other = [_alert("other", "page", "trigger", T0 + 2900)]
    assert report.time_firing_s(events + other, end) == pytest.approx(2300)
    nested = [_alert("other", "page", "trigger", T0 + 1100), _alert("other", "page", "resolve", T0 + 1200)]
    assert report.time_firing_s(events + nested, end) == pytest.approx(2300)
    assert report.time_firing_s(nested, end) == pytest.approx(100)


def test_summary_rows() -> None:
    s = _series(events=_events())
    (row,) = report.summary_rows(BacktestResult(series=[s], inputs=[]))
    assert row["slo"] == "checkout-availability"
    assert row["events"] == "120,000" and row["bad"] == "360"
    assert row["error ratio"] == "0.300%"  # 360 / 120,000
    assert row["budget consumed"] == "75.0%"  # the last budget sample with data is 0.25
    assert row["alerts"] == "2 page, 1 ticket"
    assert row["time firing"] == "15m page, 34m ticket"  # 300 + 600 s; 25 min .. the last sample, 59 min
    assert row["peak burn"] == "40.0 (5m)"


def test_all_nan_and_empty_series_still_render(tmp_path: Path) -> None:
    n = 30
    nan = SloSeries(slo="quiet", objective=99.0, period_s=28 * 86400, window_labels=list(LABELS),
                    ts_s=T0 + 60.0 * np.arange(n), burn=np.full((n, 4), np.nan),
                    budget_remaining=np.full(n, np.nan), latency_ms=np.full((n, 3), np.nan),
                    tiers=list(TIERS), events=[], totals={"events": 0, "bad": 0}, threshold_ms=250.0)
    empty = SloSeries(slo="quiet", objective=99.5, period_s=30 * 86400, window_labels=list(LABELS),
                      ts_s=np.zeros(0), burn=np.zeros((0, 4)), budget_remaining=np.zeros(0),
                      latency_ms=np.zeros((0, 3)), tiers=list(TIERS),
                      events=[_alert("quiet", "page", "trigger", T0)], totals={"events": 0, "bad": 0})
    partial = _series("a b", nan_windows=(1, 3))
    result = BacktestResult(series=[nan, empty, partial], inputs=["-"])
    index = report.write_report(result, tmp_path)
    page = _parse(index)
    assert len(page.images) == 9 and len(set(page.images)) == 9  # same SLO names, distinct files
    for src in page.images:
        _check_png(tmp_path / src)
    rows = report.summary_rows(result)
    assert [r["peak burn"] for r in rows] == ["-", "-", "40.0 (5m)"]
    assert rows[0]["error ratio"] == "-" and rows[0]["budget consumed"] == "-"
    assert rows[1]["alerts"] == "1 page, 0 ticket"
    labels = [t.get_text() for t in report.plot_burn(partial).legends[0].get_texts()]
    assert "30m (no data)" in labels and "5m" in labels


def test_series_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"burn: expected shape \(60, 4\), got \(60, 3\)"):
        SloSeries(slo="x", objective=99.9, period_s=86400, window_labels=list(LABELS),
                  ts_s=np.arange(60.0), burn=np.zeros((60, 3)), budget_remaining=np.zeros(60),
                  latency_ms=np.zeros((60, 3)), tiers=[], events=[], totals={})
    with pytest.raises(ValueError, match="non-decreasing"):
        SloSeries(slo="x", objective=99.9, period_s=86400, window_labels=[], ts_s=np.array([2.0, 1.0]),
                  burn=np.zeros((2, 0)), budget_remaining=np.zeros(2), latency_ms=np.zeros((2, 3)),
                  tiers=[], events=[], totals={})
