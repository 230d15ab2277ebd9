"""PagerDuty Events API v2 bodies built from alert events, routing-key handling and answer classes."""

from __future__ import annotations

import logging
import pickle
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from engine.alerts import AlertEvent, WindowCounts, dedup_key
from engine.errors import ConfigError, PermanentDeliveryError, RetriableDeliveryError
from engine.io.delivery import SinkRejectedError, SinkUnavailableError, http_outcome
from engine.io.pagerduty import (
    MAX_BODY_BYTES,
    PagerDutyConfig,
    PagerDutySender,
    RoutingKey,
    build_body,
    summarize,
)
from engine.io.pd_receiver import validate_alert_event
from engine.io.webhook import WebhookSender

KEY = "R0utingKey0123456789abcdefABCDEF"  # 32 alphanumeric characters
PAGE_KEY = "PageKey0000000000000000000000001"
SLO_KEY = "SloKey00000000000000000000000002"


def make_event(**over: object) -> AlertEvent:
    fields: dict[str, object] = {
        "slo": "checkout-availability", "severity": "page", "action": "trigger", "ts": 1_714_564_800.25,
        "tier": "page_quick", "burn_rates": {"5m": 31.0, "1h": 15.2, "6h": 3.1, "30m": None},
        "budget_remaining": 0.978, "dedup_key": dedup_key("checkout-availability", "page"),
        "pd_severity": "critical", "service": "checkout", "objective": 99.9, "period": "30d",
        "factors": {"page_quick": 14.4}, "windows": {"5m": WindowCounts(bad=31, total=1000),
                                                     "1h": WindowCounts(bad=182, total=12000)},
        "latency_ms": {"p50": 12.0, "p95": 80.5, "p99": 230.0},
        "runbook_url": "https://runbooks.example.com/checkout", "labels": {"team": "payments"},
        "description": "Checkout requests succeed",
    }
    fields.update(over)
    return msgspec.convert(fields, AlertEvent)


def decode(body: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(body)
    return doc


# ---------------------------------------------------------------------------------------------
# Bodies


def test_trigger_body_honours_the_contract_and_carries_the_event() -> None:
    ev = make_event()
    body, trimmed = build_body(ev, KEY, source="checkout")
    doc = decode(body)
    assert trimmed == []
    assert validate_alert_event(doc) == []
    assert doc["routing_key"] == KEY
    assert doc["event_action"] == "trigger"
    assert doc["dedup_key"] == ev.dedup_key and len(doc["dedup_key"]) == 64
    p = doc["payload"]
    assert p["severity"] == "critical"
    assert p["source"] == "checkout"
    assert (p["component"], p["group"], p["class"]) == ("checkout", "checkout-availability", "page_quick")
    assert datetime.fromisoformat(p["timestamp"]).timestamp() == pytest.approx(ev.ts, abs=1e-3)
    d = p["custom_details"]
    assert d["burn_rates"] == {"5m": 31.0, "1h": 15.2, "6h": 3.1, "30m": None}
    assert d["burn_rate_factors"] == {"page_quick": 14.4}
    assert d["error_budget_remaining"] == 0.978
    assert d["events"] == {"5m": {"bad": 31, "total": 1000}, "1h": {"bad": 182, "total": 12000}}
    assert d["latency_ms"] == {"p50": 12.0, "p95": 80.5, "p99": 230.0}
    assert d["objective_percent"] == 99.9 and d["period"] == "30d"
    assert d["labels"] == {"team": "payments"}
    assert doc["links"] == [{"href": "https://runbooks.example.com/checkout", "text": "Runbook"}]
    assert doc["client"] == "sloburn"


def test_resolve_body_has_only_the_three_fields() -> None:
    ev = make_event(action="resolve")
    body, _ = build_body(ev, KEY, source="checkout", client_url="https://sloburn.example.com")
    doc = decode(body)
    assert doc == {"routing_key": KEY, "event_action": "resolve", "dedup_key": ev.dedup_key}
    assert validate_alert_event(doc) == []


def test_trigger_without_runbook_or_service_omits_links_and_component() -> None:
    doc = decode(build_body(make_event(runbook_url=None, service=""), KEY, source="host-1")[0])
    assert "links" not in doc
    assert "component" not in doc["payload"]
    assert validate_alert_event(doc) == []


def test_summary_names_slo_rates_windows_tier_and_budget() -> None:
    text = summarize(make_event())
    assert text == ("checkout-availability burning 15.2x budget (6h 3.1x, 1h 15.2x, 5m 31.0x; "
                    "page_quick, factor 14.4), 97.8% budget left")


def test_summary_is_cut_to_1024_characters() -> None:
    ev = make_event(slo="s" * 2000)
    text = summarize(ev)
    assert len(text) == 1024 and text.endswith("...")
    doc = decode(build_body(ev, KEY, source="x")[0])
    assert len(doc["payload"]["summary"]) <= 1024
    assert validate_alert_event(doc) == []


def test_summary_without_data_or_budget() -> None:
    text = summarize(make_event(burn_rates={"1h": None}, budget_remaining=None))
    assert text == "checkout-availability burning budget (no window has data) (page_quick, factor 14.4)"


def test_huge_custom_details_are_trimmed_largest_first_under_512000_bytes() -> None:
    rng = random.Random(7)
    print("seed 7")
    labels = {f"label{i}": "".join(rng.choices("abcdefghij", k=1000)) for i in range(400)}  # ~400 KB
    ev = make_event(labels=labels, description="d" * 300_000)
    body, trimmed = build_body(ev, KEY, source="checkout")
    assert len(body) <= MAX_BODY_BYTES
    assert trimmed == ["custom_details.labels"]  # the largest entry alone was enough
    doc = decode(body)
    assert validate_alert_event(doc) == []
    d = doc["payload"]["custom_details"]
    assert "labels" not in d and d["description"] == "d" * 300_000
    assert d["burn_rates"]["1h"] == 15.2
    assert "labels" in d["trimmed"] and str(MAX_BODY_BYTES) in d["trimmed"]


def test_custom_details_then_summary_are_trimmed_for_a_small_limit() -> None:
    ev = make_event(slo="s" * 600)
    body, trimmed = build_body(ev, KEY, source="checkout", max_bytes=1500)
    assert len(body) <= 1500
    assert "custom_details" in trimmed and "payload.summary" in trimmed
    doc = decode(body)
    assert "custom_details" not in doc["payload"]
    assert doc["payload"]["summary"].endswith("...")
    assert validate_alert_event(doc) == []


def test_body_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected an event body of at most 300 bytes, got \d+ bytes"):
        build_body(make_event(), KEY, source="checkout", max_bytes=300)


def test_unusable_event_time_is_refused() -> None:
    with pytest.raises(ValueError, match="expected an epoch time in seconds, got nan"):
        build_body(make_event(ts=float("nan")), KEY, source="x")


# ---------------------------------------------------------------------------------------------
# Configuration and routing keys


def test_config_rejects_inline_keys_and_bad_shapes() -> None:
    with pytest.raises(ConfigError, match=r"^\$\.sinks\.pagerduty: object contains unknown field "
                                          r"`routing_key`$"):
        PagerDutyConfig.from_mapping({"routing_key": KEY})
    with pytest.raises(ConfigError) as e:
        PagerDutyConfig.from_mapping({"url": "ftp://x", "routing_keys": {"page": {"env": "A", "file": "/b"},
                                                                         "urgent": {"env": "C"}}})
    assert e.value.problems == [
        "$.sinks.pagerduty.url: expected an http(s) URL, got 'ftp://x'",
        "$.sinks.pagerduty.routing_keys.page: expected exactly one of 'env' or 'file', got both",
        "$.sinks.pagerduty.routing_keys.urgent: expected 'page' or 'ticket', got 'urgent'",
    ]
    with pytest.raises(ConfigError, match="expected a routing key source"):
        PagerDutyConfig.from_mapping({})


async def test_missing_key_is_a_config_error_naming_the_source(tmp_path: Path) -> None:
    cfg = PagerDutyConfig.from_mapping({"routing_key_env": "PD_KEY",
                                        "routing_keys": {"ticket": {"file": str(tmp_path / "nope")}}})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigError) as e:
            PagerDutySender(session, cfg, environ={})
    assert e.value.problems[0] == ("$.sinks.pagerduty.routing_key: expected the routing key in environment "
                                   "variable PD_KEY, got it unset or empty")
    assert e.value.problems[1].startswith("$.sinks.pagerduty.routing_keys.ticket: expected the routing key "
                                          f"in file {tmp_path / 'nope'}, got ")


async def test_key_resolution_per_slo_then_severity_then_default(tmp_path: Path) -> None:
    (tmp_path / "slo_key").write_text(SLO_KEY + "\n")
    cfg = PagerDutyConfig.from_mapping({
        "routing_key_env": "PD_KEY", "routing_keys": {"page": {"env": "PD_PAGE"}},
        "per_slo": {"special": {"file": str(tmp_path / "slo_key")}}})
    env = {"PD_KEY": KEY, "PD_PAGE": PAGE_KEY}
    async with aiohttp.ClientSession() as session:
        sender = PagerDutySender(session, cfg, environ=env)
        cases = [(make_event(severity="ticket"), KEY, "env:PD_KEY"),
                 (make_event(severity="page"), PAGE_KEY, "env:PD_PAGE"),
                 (make_event(slo="special", severity="page"), SLO_KEY, f"file:{tmp_path / 'slo_key'}")]
        for ev, key, source in cases:
            assert decode(sender.body(ev)[0])["routing_key"] == key
            assert sender.target(ev) == f"pagerduty:{source}"
            assert decode(sender.body(msgspec.structs.replace(ev, action="resolve"))[0])["routing_key"] == key


async def test_sources_sharing_one_key_share_a_pacing_target() -> None:
    cfg = PagerDutyConfig.from_mapping({"routing_key_env": "A", "routing_keys": {"page": {"env": "B"}}})
    async with aiohttp.ClientSession() as session:
        sender = PagerDutySender(session, cfg, environ={"A": KEY, "B": KEY})
        assert sender.target(make_event(severity="page")) == sender.target(make_event(severity="ticket"))


async def test_no_key_for_an_event_is_a_permanent_refusal() -> None:
    cfg = PagerDutyConfig.from_mapping({"routing_keys": {"page": {"env": "PD_PAGE"}}})
    async with aiohttp.ClientSession() as session:
        sender = PagerDutySender(session, cfg, environ={"PD_PAGE": PAGE_KEY})
        with pytest.raises(PermanentDeliveryError, match="no routing key configured for SLO "
                                                         "'checkout-availability' severity 'ticket'"):
            sender.body(make_event(severity="ticket"))


async def test_routing_key_never_in_repr_str_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    short = "short0key"  # not 32 characters: the sender warns at startup, naming only the source
    cfg = PagerDutyConfig.from_mapping({"routing_key_env": "PD_KEY",
                                        "routing_keys": {"page": {"env": "SHORT"}}})
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        sender = PagerDutySender(session, cfg, environ={"PD_KEY": KEY, "SHORT": short})
        key = RoutingKey(KEY, "env:PD_KEY")
        shown = [repr(sender), str(sender), repr(key), str(key), f"{key}", repr(cfg), repr(sender.config)]
        for text in shown:
            assert KEY not in text and short not in text
        assert "env:PD_KEY" in repr(sender)
    assert "env:SHORT" in caplog.text and short not in caplog.text and KEY not in caplog.text
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)
    # A sink that echoes the key back: the error keeps the reason, not the key.
    err = http_outcome("pagerduty", 400, msgspec.json.encode({"errors": [f"routing key {KEY} is retired"]}),
                       secrets=[KEY])
    assert isinstance(err, SinkRejectedError)
    assert KEY not in str(err) and all(KEY not in e for e in err.errors)
    assert err.errors == ["routing key <redacted> is retired"]


async def test_webhook_url_and_headers_stay_hidden() -> None:
    url = "https://hooks.example.com/services/T000/B000/s3cr3tpath"
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, url, headers={"Authorization": "Bearer tok3n"})
        assert "s3cr3tpath" not in repr(sender) and "tok3n" not in repr(sender)
        assert sender.target(make_event()) == "webhook"
        with pytest.raises(ConfigError, match=r"\$\.sinks\.webhook\.url: expected an http\(s\) URL"):
            WebhookSender(session, "file:///etc/passwd")


# ---------------------------------------------------------------------------------------------
# Answer classes


@pytest.mark.parametrize(("status", "kind"), [
    (200, None), (202, None), (204, None),
    (400, PermanentDeliveryError), (401, PermanentDeliveryError), (404, PermanentDeliveryError),
    (413, PermanentDeliveryError), (301, PermanentDeliveryError),
    (408, RetriableDeliveryError), (429, RetriableDeliveryError), (500, RetriableDeliveryError),
    (502, RetriableDeliveryError), (503, RetriableDeliveryError), (504, RetriableDeliveryError),
])
def test_http_answers_are_classified(status: int, kind: type[Exception] | None) -> None:
    err = http_outcome("pagerduty", status, b"")
    if kind is None:
        assert err is None
    else:
        assert isinstance(err, kind)
        assert err.retriable is (kind is RetriableDeliveryError)
        assert f"HTTP {status}" in str(err)


def test_pagerduty_400_carries_its_errors_list() -> None:
    body = msgspec.json.encode({"status": "invalid event", "message": "Event object is invalid",
                                "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"]})
    err = http_outcome("pagerduty", 400, body)
    assert isinstance(err, SinkRejectedError) and err.status == 400
    assert err.errors == ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    unavailable = http_outcome("pagerduty", 503, b"<html>busy</html>")
    assert isinstance(unavailable, SinkUnavailableError) and unavailable.status == 503
    assert "busy" in str(unavailable)
