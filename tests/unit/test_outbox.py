"""The SQLite outbox (order, idempotency, coalescing, operator actions), pacing math and the CLI."""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engine.alerts import AlertEvent, dedup_key
from engine.cli_outbox import register
from engine.io.delivery import TokenBucket, backoff_s
from engine.io.outbox import Outbox, OutboxError, idempotency_key


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(slo: str, action: str, ts: float, severity: str = "page") -> AlertEvent:
    return AlertEvent(slo=slo, severity=severity, action=action, ts=ts, tier="page_quick",
                      burn_rates={"1h": 15.0, "5m": 30.0}, budget_remaining=0.9,
                      dedup_key=dedup_key(slo, severity))


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "state" / "outbox.sqlite3", clock=Clock()) as b:
        yield b


def heads(b: Outbox) -> list[tuple[str, str, float]]:
    return [(r.slo, r.action, r.event_ts) for r in b.next_batch()]


def deliver_all_heads(b: Outbox) -> None:
    for r in b.next_batch():
        b.begin_attempt(r.id)
        b.mark_delivered(r.id, target="t")


# ---------------------------------------------------------------------------------------------
# Storage


def test_wal_mode_full_sync_and_schema(box: Outbox) -> None:
    assert box.pragma("journal_mode") == "wal"
    assert box.pragma("synchronous") == 2  # FULL
    assert box.path.with_name("outbox.sqlite3-wal").exists()


def test_append_is_idempotent_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    events = [ev("a", "trigger", 100.0), ev("b", "trigger", 100.5), ev("a", "resolve", 160.0)]
    with Outbox(path, coalesce=False) as b:
        assert b.append(events, batch_id="tick-1") == 3
        assert b.append(events) == 0
        assert b.append([*events, ev("a", "trigger", 220.0)]) == 1
        first = b.next_batch()[0]
        b.begin_attempt(first.id)
        b.mark_delivered(first.id, target="pagerduty:env:K")
    with Outbox(path) as b:  # as after a kill -9 and a replay from the last checkpoint
        assert b.append(events) == 0
        rows = b.list()
        assert [(r.slo, r.action, r.status) for r in rows] == [
            ("a", "trigger", "delivered"), ("b", "trigger", "pending"), ("a", "resolve", "pending"),
            ("a", "trigger", "pending")]
        assert rows[0].delivered_at is not None and rows[0].target == "pagerduty:env:K"
        assert rows[0].batch_id == "tick-1" and rows[0].attempts == 1
        assert rows[1].event == events[1]


def test_idempotency_key_depends_on_each_part() -> None:
    base = ev("a", "trigger", 100.0)
    keys = {idempotency_key(base, "pagerduty"), idempotency_key(base, "webhook"),
            idempotency_key(ev("a", "resolve", 100.0), "pagerduty"),
            idempotency_key(ev("a", "trigger", 100.000001), "pagerduty"),
            idempotency_key(ev("b", "trigger", 100.0), "pagerduty")}
    assert len(keys) == 5
    assert idempotency_key(ev("a", "trigger", 100.0), "pagerduty") == idempotency_key(base, "pagerduty")
    # An integral time written as an int (e.g. decoded from JSON) is the same transition.
    assert idempotency_key(ev("a", "trigger", 100), "pagerduty") == idempotency_key(base, "pagerduty")


def test_each_sink_gets_its_own_lane(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", sinks=("pagerduty", "webhook"), coalesce=False) as b:
        assert b.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0)]) == 4
        batch = b.next_batch()
        assert sorted((r.sink, r.action) for r in batch) == [("pagerduty", "trigger"), ("webhook", "trigger")]
        pd = next(r for r in batch if r.sink == "pagerduty")
        b.begin_attempt(pd.id)
        b.mark_delivered(pd.id)
        assert sorted((r.sink, r.action) for r in b.next_batch()) == [("pagerduty", "resolve"),
                                                                        ("webhook", "trigger")]
        assert b.depth(["webhook"]) == 2 and b.depth() == 3


# ---------------------------------------------------------------------------------------------
# Order


def test_only_the_oldest_pending_row_of_each_key_is_offered(box: Outbox) -> None:
    box.coalesce = False
    box.append([ev("a", "trigger", 1.0), ev("b", "trigger", 2.0), ev("a", "resolve", 3.0),
                ev("c", "trigger", 4.0), ev("b", "resolve", 5.0), ev("a", "trigger", 6.0)])
    assert heads(box) == [("a", "trigger", 1.0), ("b", "trigger", 2.0), ("c", "trigger", 4.0)]
    deliver_all_heads(box)
    assert heads(box) == [("a", "resolve", 3.0), ("b", "resolve", 5.0)]
    deliver_all_heads(box)
    assert heads(box) == [("a", "trigger", 6.0)]
    deliver_all_heads(box)
    assert heads(box) == [] and box.depth() == 0


def test_a_row_being_retried_holds_back_its_key(box: Outbox) -> None:
    box.coalesce = False
    box.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0), ev("b", "trigger", 3.0)])
    a = box.next_batch()[0]
    box.begin_attempt(a.id)
    box.mark_failed(a.id, "pagerduty: HTTP 503: busy")
    batch = box.next_batch()
    assert [(r.slo, r.action) for r in batch] == [("a", "trigger"), ("b", "trigger")]
    assert batch[0].attempts == 1 and batch[0].last_error == "pagerduty: HTTP 503: busy"


def test_a_dead_row_does_not_block_its_key(box: Outbox) -> None:
    box.coalesce = False
    box.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0)])
    t = box.next_batch()[0]
    box.begin_attempt(t.id)
    box.mark_dead(t.id, "pagerduty: HTTP 400: bad key", ["Length of 'routing_key' is incorrect"])
    assert heads(box) == [("a", "resolve", 2.0)]
    dead = box.list("dead")
    assert [r.id for r in dead] == [t.id]
    assert dead[0].reason == "pagerduty: HTTP 400: bad key"
    assert dead[0].errors == ["Length of 'routing_key' is incorrect"]


# ---------------------------------------------------------------------------------------------
# Coalescing


def test_never_sent_trigger_and_its_resolve_coalesce(box: Outbox) -> None:
    box.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0), ev("a", "trigger", 3.0),
                ev("b", "trigger", 4.0)])
    assert heads(box) == [("a", "trigger", 3.0), ("b", "trigger", 4.0)]
    counts = box.counts_by_status()
    assert counts == {"pending": 2, "delivered": 0, "dead": 0, "dropped": 0, "coalesced": 2}
    assert all("never sent" in (r.reason or "") for r in box.list("coalesced"))


def test_an_attempted_trigger_always_gets_its_resolve(box: Outbox) -> None:
    box.append([ev("a", "trigger", 1.0)])
    t = box.next_batch()[0]
    box.begin_attempt(t.id)  # e.g. timed out: PagerDuty may have it
    box.mark_failed(t.id, "timeout")
    box.append([ev("a", "resolve", 2.0)])
    assert heads(box) == [("a", "trigger", 1.0)]
    assert box.counts_by_status()["coalesced"] == 0


def test_a_delivered_trigger_blocks_coalescing_of_later_pairs(box: Outbox) -> None:
    # An odd lane (two triggers in a row): the delivered one may be open, so the later pair must go out.
    box.append([ev("a", "trigger", 1.0)])
    deliver_all_heads(box)
    box.append([ev("a", "trigger", 2.0), ev("a", "resolve", 3.0)])
    assert heads(box) == [("a", "trigger", 2.0)]
    # After a delivered resolve the alert is closed: a later never-sent pair coalesces.
    deliver_all_heads(box)
    deliver_all_heads(box)
    box.append([ev("a", "trigger", 4.0), ev("a", "resolve", 5.0)])
    assert heads(box) == []
    assert box.counts_by_status()["coalesced"] == 2


def test_coalescing_can_be_turned_off(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", coalesce=False) as b:
        b.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0)])
        assert heads(b) == [("a", "trigger", 1.0)]


# ---------------------------------------------------------------------------------------------
# Operator actions


def test_retry_and_drop(box: Outbox) -> None:
    box.append([ev("a", "trigger", 1.0), ev("b", "trigger", 2.0)])
    a, b = box.next_batch()
    box.mark_dead(a.id, "refused", ["bad"])
    with pytest.raises(OutboxError, match=f"row {b.id}: expected a dead row to retry, got status 'pending'"):
        box.retry(b.id)
    row = box.retry(a.id)
    assert row.status == "pending" and row.reason is None and row.errors == []
    assert row.last_error == "refused"
    dropped = box.drop(b.id)
    assert dropped.status == "dropped" and dropped.reason == "dropped by operator"
    with pytest.raises(OutboxError, match=f"row {b.id}: expected a pending or dead row to drop, got status "
                                          "'dropped'"):
        box.drop(b.id)
    with pytest.raises(OutboxError, match="no outbox row with id 999"):
        box.retry(999)
    with pytest.raises(OutboxError, match="expected a status among pending, delivered"):
        box.list("lost")


def test_retry_refuses_a_dead_row_superseded_by_a_delivered_one(box: Outbox) -> None:
    box.coalesce = False
    box.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0), ev("b", "trigger", 3.0)])
    t, tb = box.next_batch()
    box.mark_dead(t.id, "refused")
    box.mark_dead(tb.id, "refused")
    deliver_all_heads(box)  # a's resolve goes out
    with pytest.raises(OutboxError, match=rf"row {t.id}: superseded by row {t.id + 1} of the same dedup_key"):
        box.retry(t.id)
    assert box.retry_all_dead() == ([tb.id], [t.id])
    assert box.retry(t.id, force=True).status == "pending"


def test_prune_keeps_the_newest_delivered_row_of_each_key(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite3", clock=clock, coalesce=False) as b:
        b.append([ev("a", "trigger", 1.0), ev("a", "resolve", 2.0), ev("b", "trigger", 3.0)])
        deliver_all_heads(b)
        deliver_all_heads(b)
        clock.t += 10 * 86400
        b.append([ev("c", "trigger", 4.0)])
        deliver_all_heads(b)
        assert b.prune(7 * 86400) == 1  # a's trigger; a's resolve and b's trigger are their lanes' newest
        assert [(r.slo, r.action) for r in b.list()] == [("a", "resolve"), ("b", "trigger"), ("c", "trigger")]


def test_undecodable_rows_are_offered_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as b:
        b.append([ev("a", "trigger", 1.0)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE outbox SET event = ?", (b'{"slo": 1}',))
    with Outbox(path) as b:
        (row,) = b.next_batch()
        assert row.event is None
        assert row.decode_error is not None and row.decode_error.startswith("stored event does not decode")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=9")
    with pytest.raises(OutboxError, match="expected outbox schema version <= 1, got 9"):
        Outbox(path)


# ---------------------------------------------------------------------------------------------
# Pacing and backoff


def test_token_bucket_admits_burst_plus_rate() -> None:
    bucket = TokenBucket(rate_per_s=100 / 60, burst=10, now_s=0.0)
    taken = []
    t = 0.0
    while t < 180.0:
        if bucket.take(t):
            taken.append(t)
        t += 0.01
    # In every 60 s span at most burst + 100 events, i.e. below PagerDuty's 120 per minute.
    for i, start in enumerate(taken):
        in_window = sum(1 for x in taken[i:] if x < start + 60.0)
        assert in_window <= 110
    assert len(taken) == pytest.approx(10 + 180 * 100 / 60, abs=2)
    small = TokenBucket(rate_per_s=1.0, burst=2, now_s=0.0)
    assert [small.take(0.0) for _ in range(3)] == [True, True, False]
    assert small.wait_s(0.0) == 1.0 and small.wait_s(0.25) == 0.75
    assert small.take(1.0) and not small.take(1.0)
    with pytest.raises(ValueError, match="expected rate > 0 and burst >= 1"):
        TokenBucket(0, 10, 0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_jitter_backoff_stays_within_its_bounds(seed: int) -> None:
    rng = random.Random(seed)
    print(f"seed {seed}")
    for failures in range(1, 15):
        bound = min(60.0, 0.5 * 2 ** (failures - 1))
        samples = [backoff_s(failures, 0.5, 60.0, rng) for _ in range(200)]
        assert all(0.0 <= s <= bound for s in samples)
        assert max(samples) > 0.5 * bound  # spread over the whole range, not a fixed delay
    assert backoff_s(10_000, 0.5, 60.0, rng) <= 60.0


# ---------------------------------------------------------------------------------------------
# CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sloburn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_list_retry_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    state = tmp_path / "state"
    with Outbox(state / "outbox.sqlite3") as b:
        b.append([ev("checkout", "trigger", 1.0), ev("search", "trigger", 2.0)])
        first, second = b.next_batch()
        b.mark_dead(first.id, "pagerduty: HTTP 400: bad", ["Length of 'routing_key' is incorrect"])
    capsys.readouterr()
    assert run_cli(["outbox", "--state-dir", str(state), "list", "--status", "dead", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["id"] == first.id and doc["errors"] == ["Length of 'routing_key' is incorrect"]
    assert msgspec.convert(doc["event"], AlertEvent) == ev("checkout", "trigger", 1.0)

    assert run_cli(["outbox", "--state-dir", str(state), "list"]) == 0
    out = capsys.readouterr().out
    assert "checkout" in out and "search" in out and "dead: 1" in out and "pending: 1" in out

    assert run_cli(["outbox", "--state-dir", str(state), "retry", str(second.id)]) == 1
    assert "expected a dead row to retry" in capsys.readouterr().err
    assert run_cli(["outbox", "--state-dir", str(state), "retry", "--all-dead"]) == 0
    assert f"retried 1 dead row(s): [{first.id}]" in capsys.readouterr().out
    assert run_cli(["outbox", "--state-dir", str(state), "drop", str(second.id)]) == 0
    with Outbox(state / "outbox.sqlite3") as b:
        assert b.counts_by_status()["pending"] == 1 and b.get(second.id).status == "dropped"


def test_cli_finds_the_outbox_through_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "sloburn.yaml"
    cfg.write_text("state_dir: ../var\nslos:\n  - name: checkout\n    service: checkout\n"
                   "    objective: 99.9\n    sli: {availability: {}}\n")
    assert run_cli(["outbox", "--config", str(cfg), "list"]) == 2
    assert f"no outbox at {tmp_path / 'conf' / '..' / 'var' / 'outbox.sqlite3'}" in capsys.readouterr().err
    with Outbox(tmp_path / "var" / "outbox.sqlite3") as b:
        b.append([ev("checkout", "trigger", 1.0)])
    assert run_cli(["outbox", "--config", str(cfg), "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["slo"] == "checkout"
    cfg.write_text("slos:\n  - name: checkout\n    service: checkout\n    objective: 99.9\n"
                   "    sli: {availability: {}}\n")
    assert run_cli(["outbox", "--config", str(cfg), "list"]) == 2
    assert "$.state_dir: required field is missing" in capsys.readouterr().err
