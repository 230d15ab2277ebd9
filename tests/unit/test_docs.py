"""The configuration reference: written from the config structs, and docs/configuration.md is current."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import msgspec.inspect as mi
import pytest

from engine.config import Config
from engine.docs import config_reference, docstring_parts, github_anchor, register, render_type, sections

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "configuration.md"


def test_configuration_md_is_current() -> None:
    current = REFERENCE.read_text(encoding="utf-8")
    assert current == config_reference(), (
        "docs/configuration.md is out of date with the configuration structs: run "
        "`sloburn docs config --out docs/configuration.md`")


def test_every_key_of_every_struct_has_a_row_in_its_section() -> None:
    text = config_reference()
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    by_heading = {p.splitlines()[0]: p for p in parts[1:]}
    secs = sections()
    assert {s.cls for s in secs} >= {Config}
    for s in secs:
        body = next(b for h, b in by_heading.items() if h.endswith(f"({s.cls.__name__})"))
        rows = re.findall(r"^\| `([^`]+)` \|", body, flags=re.MULTILINE)
        assert rows == [f.encode_name for f in s.info.fields], s.cls.__name__


def test_contents_links_resolve_to_headings() -> None:
    text = config_reference()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    missing = sorted(set(links) - anchors)
    assert not missing, f"links to missing sections: {missing}"


def test_every_struct_reachable_from_config_is_documented_once() -> None:
    # Walk the annotations independently of engine.docs: every Struct class mentioned anywhere.
    found: set[type] = set()

    def walk(t: object) -> None:
        if isinstance(t, mi.StructType):
            if t.cls in found:
                return
            found.add(t.cls)
            for f in t.fields:
                walk(f.type)
        for attr in ("type", "item_type", "value_type"):
            if hasattr(t, attr):
                walk(getattr(t, attr))
        for sub in getattr(t, "types", ()):
            walk(sub)

    walk(mi.type_info(Config))
    documented = [s.cls for s in sections()]
    assert len(documented) == len(set(documented))
    assert set(documented) == found


# ---------------------------------------------------------------------------------------------
# rendering


class _Inner(msgspec.Struct, kw_only=True):
    """An inner section."""

    x: int = 0


class _Sample(msgspec.Struct, kw_only=True):
    """Summary line.

    Prose that stays.

    Attributes
    ----------
    count
        How many, at least one.
    low, high
        Bounds in seconds.
    Others
        Passed through.
    """

    count: Annotated[int, msgspec.Meta(ge=1)] = 1
    low: float = 0.0
    high: float = 1.0
    mode: Literal["a", "b"] = "a"
    wait: str | int | float | None = None
    inner: dict[str, _Inner] = msgspec.field(default_factory=dict)
    named: Annotated[str, msgspec.Meta(description="Said in the annotation.")] = ""


def test_render_type_words() -> None:
    fields = {f.name: f for f in mi.type_info(_Sample).fields}  # type: ignore[union-attr]
    anchors = {_Inner: "inner-anchor"}
    assert render_type(fields["count"].type, anchors) == "integer >= 1"
    assert render_type(fields["low"].type, anchors) == "number"
    assert render_type(fields["mode"].type, anchors) == "one of `a`, `b`"
    assert render_type(fields["wait"].type, anchors) == "duration or null"
    assert render_type(fields["inner"].type, anchors) == "mapping of string to [_Inner](#inner-anchor)"


def test_docstring_attributes_are_split_from_the_prose() -> None:
    prose, entries = docstring_parts(_Sample)
    assert prose == "Summary line.\n\nProse that stays."
    assert entries == {"count": "How many, at least one.", "low, high": "Bounds in seconds.",
                       "Others": "Passed through."}


def test_reference_of_a_sample_struct() -> None:
    text = config_reference(_Sample)
    assert "| `count` | integer >= 1 | `1` | How many, at least one. |" in text
    assert "| `low` | number | `0.0` | Bounds in seconds. |" in text
    assert "| `high` | number | `1.0` | Bounds in seconds. |" in text
    assert "| `named` | string | `\"\"` | Said in the annotation. |" in text
    assert "| `inner` | mapping of string to [_Inner](#innerkey-_inner) | `{}` | - |" in text
    assert "Others: Passed through." in text
    assert "## `inner.<key>` (_Inner)" in text


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Top level (Config)", "top-level-config"),
    ("`slos[].sli.availability` (AvailabilitySLI)", "slossliavailability-availabilitysli"),
    ("`sinks.pagerduty.routing_keys.<key>` (KeySource)", "sinkspagerdutyrouting_keyskey-keysource"),
    ("sloburn's own SLOs", "sloburns-own-slos"),
])
def test_github_anchor(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


# ---------------------------------------------------------------------------------------------
# command


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sloburn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_command_writes_and_checks_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "configuration.md"
    assert _run(["docs", "config", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == config_reference()
    assert _run(["docs", "config", "--out", str(out), "--check"]) == 0
    out.write_text(config_reference().replace("| `tick_s` |", "| `tick_ms` |"), encoding="utf-8")
    capsys.readouterr()
    assert _run(["docs", "config", "--out", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert _run(["docs", "config", "--check"]) == 1
    assert _run(["docs", "config", "--out", str(tmp_path / "missing.md"), "--check"]) == 1


def test_command_prints_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["docs", "config"]) == 0
    assert capsys.readouterr().out == config_reference()
