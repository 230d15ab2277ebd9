"""SLO files of other tools (Sloth, OpenSLO, Pyrra) as a sloburn configuration.

``import_paths("sloth", [...])`` reads every YAML document of the given files and returns an
:class:`ImportResult`: the SLOs it could carry over (objective, period, alert names, labels,
severities, window catalogs, descriptions, runbooks) and the documents it refused, each with a precise
reason. :func:`render_config` writes the result as a sloburn config that :func:`engine.config.load_config`
accepts.

SLIs are PromQL in these tools and events are not time series; :mod:`engine.importers.promql` reads the
usual query shapes back as status matchers and latency thresholds. Each SLO says how that went:

========== ======================================================================================
state      meaning (``labels.sloburn_import`` of the SLO, and the comments above its ``sli``)
========== ======================================================================================
translated the queries read exactly as a sloburn SLI; no label
check      translated, but something has no exact event-level equivalent (a ``CHECK:`` comment
           says what); ``sloburn_import: check-sli``
needs-sli  the SLI is a placeholder (``5xx`` errors) to be written by hand (a ``FILL IN:`` comment
           says why, with the original queries); ``sloburn_import: needs-sli``
========== ======================================================================================

Alert metadata travels in the SLO's ``labels`` (sloburn puts them in every alert it sends, and
``sloburn export prometheus`` puts them back where the other tool had them):

- ``alertname``: the name of the alert rule;
- ``alert.<k>``: a label of the alerts only (Sloth ``alerting.labels``);
- ``page.<k>`` / ``ticket.<k>``: a label of one severity's alert (Sloth ``page_alert.labels``, other
  than a ``severity`` that is a PagerDuty severity, which goes to ``alerting.severities``);
- ``annotation.<k>``, ``page.annotation.<k>``: alert annotations (a runbook goes to ``runbook_url``);
- ``info.<k>``: a label of the SLO's info metric only (Sloth's ``info_labels`` plugin);
- any other key: a label of the SLO (on every recorded series and alert).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import TextLoader, parse_config
from engine.errors import ConfigError

TOOLS = ("sloth", "openslo", "pyrra")
IMPORT_LABEL = "sloburn_import"
STATE_LABEL = {"check": "check-sli", "needs-sli": "needs-sli"}
PD_SEVERITIES = ("critical", "error", "warning", "info")
SLO_KEYS = ("name", "service", "route", "operation", "match_labels", "objective", "period", "description",
            "runbook_url", "labels", "sli", "alerting")


@dataclass
class Document:
    """One YAML document of an input file; ``where`` names it in messages."""

    path: str
    index: int
    data: Any
    multi: bool = False

    @property
    def where(self) -> str:
        return f"{self.path} (document {self.index})" if self.multi else self.path


@dataclass
class ImportedSLO:
    """A sloburn SLO (``slo``, as it will be written) and what the reader should know about it."""

    slo: dict[str, Any]
    where: str
    state: str = "translated"
    notes: list[str] = field(default_factory=list)      # CHECK: / FILL IN: lines, above `sli:`
    info: list[str] = field(default_factory=list)       # origin, original queries, mappings
    queries: dict[str, str] = field(default_factory=dict)  # entry of `export prometheus --metrics`


@dataclass
class Outcome:
    """A document that gave no SLO: ``what`` it is and why; ``supplied``: it served an imported SLO."""

    where: str
    what: str
    reason: str
    supplied: bool = False


@dataclass
class ImportResult:
    slos: list[ImportedSLO] = field(default_factory=list)
    refused: list[Outcome] = field(default_factory=list)
    ignored: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the run as a whole


@dataclass
class ImportOptions:
    """``period``: SLO period where the source has none (Sloth); ``windows``: period_s -> tier list
    read from Sloth ``AlertWindows`` files given with ``--windows``."""

    period: str | None = None
    windows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- values


def label_value(v: Any) -> str:
    """A YAML scalar (or list of them) as a label value the way Prometheus tools write it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list):
        return ",".join(label_value(x) for x in v)
    return "" if v is None else str(v)


def number(v: Any) -> float | None:
    """A number written as a number or a numeric string (Pyrra's ``target: "99.5"``); None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def percent(ratio: float) -> float:
    """0.999 -> 99.9 without the float artefact of the multiplication."""
    return round(ratio * 100.0, 10)


def detect_tool(data: Any) -> str | None:
    """Which tool a document belongs to, by its version fields."""
    if not isinstance(data, dict):
        return None
    api = str(data.get("apiVersion", ""))
    if data.get("version") == "prometheus/v1" or api.startswith("sloth.slok.dev/"):
        return "sloth"
    if api.startswith(("openslo/", "openslo.com/")):
        return "openslo"
    if api.startswith("pyrra.dev/") or (api == "v1alpha1" and data.get("kind") == "ServiceLevelObjective"):
        return "pyrra"
    return None


def not_this_tool(data: Any, tool: str) -> str:
    """The refusal reason for a document that is not ``tool``'s."""
    other = detect_tool(data)
    if other is not None and other != tool:
        return f"this is a {other} document: use `sloburn import {other}`"
    if not isinstance(data, dict):
        return f"expected a mapping (a {tool} document), got {type(data).__name__}"
    api, kind = data.get("apiVersion"), data.get("kind")
    return f"not a {tool} SLO document (apiVersion {api!r}, kind {kind!r})"


def new_slo(**fields: Any) -> dict[str, Any]:
    """SLO fields in the order users read them, empty ones left out (99.0 written as 99)."""
    obj = fields.get("objective")
    if isinstance(obj, float) and obj.is_integer():
        fields["objective"] = int(obj)
    alerting = fields.get("alerting")
    if isinstance(alerting, dict):
        # Alert as the source tool did: sloburn's own guards (min_events 100, keep_firing_for 10m)
        # are left for the user to turn on, so that an imported SLO pages exactly as before.
        alerting.setdefault("min_events", 0)
        alerting.setdefault("keep_firing_for", "0s")
    return {k: fields[k] for k in SLO_KEYS if fields.get(k) not in (None, "", {}, [])}


def read_documents(path: str) -> list[Document]:
    """Every document of a YAML file; a top-level list counts as one document per item.

    Raises :class:`ConfigError` when the file cannot be read or is not YAML.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{p}: cannot read: {getattr(e, 'strerror', None) or e}"]) from None
    try:
        raw = [d for d in yaml.load_all(text, Loader=TextLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"{p}: expected valid YAML, got a syntax error{at}: "
                           f"{getattr(e, 'problem', None) or e}"]) from None
    flat: list[Any] = []
    for d in raw:
        flat.extend(d if isinstance(d, list) else [d])
    return [Document(str(path), i + 1, d, multi=len(flat) > 1) for i, d in enumerate(flat)]


# ------------------------------------------------------------------------------------- driver


def import_paths(tool: str, paths: list[str], *, windows: list[str] | None = None,
                 period: str | None = None) -> ImportResult:
    """Import ``paths`` written for ``tool`` (``sloth``, ``openslo`` or ``pyrra``).

    ``windows`` are Sloth ``AlertWindows`` files (used for SLOs of their ``sloPeriod``); ``period``
    is the SLO period where the source names none (Sloth's ``--default-slo-period``, 30d).
    Raises :class:`ConfigError` for an unknown tool or an unusable window file.
    """
    from engine.importers import openslo, pyrra, sloth

    modules = {"sloth": sloth, "openslo": openslo, "pyrra": pyrra}
    if tool not in modules:
        raise ConfigError([f"expected one of {', '.join(TOOLS)}, got {tool!r}"])
    opts = ImportOptions(period=period, windows=sloth.read_window_files(windows or []))
    result = ImportResult()
    docs: list[Document] = []
    for path in paths:
        try:
            docs.extend(read_documents(path))
        except ConfigError as e:
            result.refused.append(Outcome(path, "file", "; ".join(e.problems)))
    converted = modules[tool].convert(docs, opts)
    result.refused.extend(converted.refused)
    result.ignored.extend(converted.ignored)
    _finish(converted.slos, result)
    from engine.durations import format_duration, parse_duration_s

    periods = {parse_duration_s(s.slo.get("period", "30d")) for s in result.slos}
    for p_s in sorted(set(opts.windows) - periods):
        result.notes.append(f"--windows: no imported SLO has the period {format_duration(p_s)}, so that "
                            f"catalog is not used (--period sets the period of Sloth SLOs)")
    for path in paths:
        if (any(_of(o.where, path) for o in result.refused) or any(_of(s.where, path) for s in result.slos)
                or any(_of(o.where, path) and o.supplied for o in result.ignored)):
            continue
        kinds = [o.what for o in result.ignored if _of(o.where, path)]
        only = f": only {', '.join(kinds)}" if kinds else ""
        result.refused.append(Outcome(path, "file", f"no SLO in this file{only}"))
    return result


def _of(where: str, path: str) -> bool:
    return where == path or where.startswith(f"{path} (document ")


def _finish(slos: list[ImportedSLO], result: ImportResult) -> None:
    """Unique names, state labels, and a validation of each SLO on its own."""
    taken: set[str] = set()
    for imp in slos:
        name = str(imp.slo.get("name", ""))
        if name in taken:
            # Another service's SLO of the same name: prefix the service (Sloth's sloth_id); the same
            # service twice: number it. Either way `export prometheus` keeps the ids apart.
            service = str(imp.slo.get("service"))
            clash = any(s.slo["name"] == name and s.slo.get("service") == service for s in result.slos)
            new = f"{name}-2" if clash else f"{service}-{name}"
            k = 2
            while new in taken:
                k += 1
                new = f"{name}-{k}"
            imp.info.append(f"renamed from {name!r}: another imported SLO has that name")
            imp.slo["name"] = name = new
        if imp.state in STATE_LABEL:
            imp.slo["labels"] = {**imp.slo.get("labels", {}), IMPORT_LABEL: STATE_LABEL[imp.state]}
            imp.slo = new_slo(**imp.slo)
        try:
            parse_config({"slos": [imp.slo]}, source="<import>")
        except ConfigError as e:
            problems = [p.replace("<import>: $.slos[0].", "").replace("<import>: ", "") for p in e.problems]
            result.refused.append(Outcome(imp.where, f"SLO {name}", "; ".join(problems)))
            continue
        taken.add(name)
        result.slos.append(imp)


# ------------------------------------------------------------------------------------- output


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _scalar(v: Any) -> bool:
    return v is None or (isinstance(v, str | int | float | bool) and not (isinstance(v, str) and "\n" in v))


def _dict(dumper: yaml.SafeDumper, data: dict[Any, Any]) -> yaml.MappingNode:
    # Short mappings of scalars inline ({page: critical, ticket: warning}), everything else as blocks.
    flow = all(_scalar(v) for v in data.values()) and sum(len(f"{k}: {v}, ") for k, v in data.items()) < 100
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=all(_scalar(v) for v in data))


_Dumper.add_representer(str, _str)
_Dumper.add_representer(dict, _dict)
_Dumper.add_representer(list, _list)


def dump_yaml(data: Any) -> str:
    """YAML as people write it: keys in the given order, short collections inline, `|` blocks."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def _comment(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, 104 - len(indent),
                                                          subsequent_indent="  ",
                                                          break_long_words=False,
                                                          break_on_hyphens=False)] or [f"{indent}#"]


def render_config(result: ImportResult, *, tool: str, inputs: list[str]) -> str:
    """The imported SLOs as sloburn config text, with the comments a reviewer needs."""
    counts = {s: sum(1 for i in result.slos if i.state == s) for s in ("translated", "check", "needs-sli")}
    head = [
        f"sloburn configuration converted from {tool} SLO files by `sloburn import {tool}`.",
        f"Inputs: {', '.join(inputs)}.",
        f"{len(result.slos)} SLO(s): {counts['translated']} with the SLI translated from PromQL, "
        f"{counts['check']} to check (CHECK), {counts['needs-sli']} with an SLI to write (FILL IN).",
        "PromQL cannot run on events: where the queries follow the usual patterns (status matchers, "
        "histogram buckets) they were read back as status matchers or latency thresholds. Every SLO "
        f"still marked with the label {IMPORT_LABEL} needs a look before use.",
        "Labels: alertname = alert rule name; alert.* / page.* / ticket.* = labels of the alerts, or of "
        "one severity's alert; annotation.* = alert annotations; info.* = labels of the info metric.",
    ]
    lines: list[str] = []
    for h in head:
        lines.extend(_comment(h))
    for o in result.refused:
        lines.extend(_comment(f"Not imported: {o.where}: {o.what}: {o.reason}"))
    lines.append("slos:")
    for imp in result.slos:
        lines.append("")
        for text in imp.info:
            lines.extend(_comment(text))
        body = dump_yaml([imp.slo]).rstrip("\n").split("\n")
        at = next((i for i, ln in enumerate(body) if ln.startswith("  sli:")), len(body))
        notes = [c for n in imp.notes for c in _comment(n, "  ")]
        lines.extend(body[:at] + notes + body[at:])
    return "\n".join(lines) + "\n"


def render_metrics(result: ImportResult) -> str:
    """The original queries per SLO, as the ``--metrics`` file of ``sloburn export prometheus``."""
    entries = {imp.slo["name"]: imp.queries for imp in result.slos if imp.queries}
    head = ("# PromQL of the imported SLOs, for `sloburn export prometheus CONFIG --metrics THIS_FILE`:\n"
            "# the exported rules then measure what the original tool measured.\n")
    return head + dump_yaml({"slos": entries})


def summary_lines(result: ImportResult) -> list[str]:
    """One line per SLO that needs attention and per refused document, then a total."""
    out = []
    for imp in result.slos:
        if imp.state != "translated":
            first = imp.notes[0] if imp.notes else ""
            out.append(f"{imp.where}: SLO {imp.slo['name']}: {STATE_LABEL[imp.state]}: {first}")
    out.extend(f"{o.where}: {o.what}: refused: {o.reason}" for o in result.refused)
    out.extend(result.notes)
    counts = {s: sum(1 for i in result.slos if i.state == s) for s in ("translated", "check", "needs-sli")}
    out.append(f"imported {len(result.slos)} SLO(s): {counts['translated']} translated, {counts['check']} "
               f"to check, {counts['needs-sli']} need an SLI; refused {len(result.refused)}, "
               f"ignored {len(result.ignored)} document(s) that define no SLO")
    return out
