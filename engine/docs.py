"""``sloburn docs config``: the configuration reference, written from the configuration structs.

::

    sloburn docs config                                   # Markdown on stdout
    sloburn docs config --out docs/configuration.md       # write the file
    sloburn docs config --out docs/configuration.md --check   # exit 1 if the file is out of date

Everything in the reference comes from the code, so that it cannot drift from what
:func:`engine.config.load_config` accepts: keys as written in YAML, types and their constraints
(``integer >= 1``), defaults and whether a key is required come from :mod:`msgspec.inspect`; the
text comes from each struct's docstring (its prose, and one line per key from a NumPy
``Attributes`` section where the struct has one). ``docs/configuration.md`` is this module's
output, and a unit test checks that it still is.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from engine.config import Config

EXIT_OK, EXIT_FAIL = 0, 1

INTRO = """\
# Configuration reference

A sloburn configuration is one YAML file: `slos` (required) and the sections below. Unknown keys
are refused, and every problem is reported as `file: $.path: expected ..., got ...`. Durations
are written as text (`30s`, `5m`, `1h30m`, `30d`) or as a number of seconds. Secrets never appear
in a configuration: only the names of the environment variables or files that hold them.

`sloburn validate CONFIG` checks a file and prints the alert tiers it resolves to. This reference
is written by `sloburn docs config --out docs/configuration.md` from the configuration structs
(`engine/config.py`, `engine/daemon_config.py`): change their docstrings, then run it again.
"""

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


@dataclass
class _Section:
    """One struct, documented at the first YAML path where it appears."""

    path: str
    cls: type
    info: mi.StructType
    also: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# docstrings


def _markdown(text: str) -> str:
    """reStructuredText roles and literals as Markdown code spans."""
    # :class:`~a.b.C` shows `C`, :class:`a.b.C` shows `a.b.C`, as Sphinx does.
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return _LITERAL.sub(r"`\1`", text)


def _is_rule(line: str) -> bool:
    return len(line) >= 3 and set(line) == {"-"}


def docstring_parts(cls: type) -> tuple[str, dict[str, str]]:
    """A struct's own docstring as (prose, {attribute entry names: description}).

    The ``Attributes`` section is split into entries: a line at the left margin names one or more
    keys (``group_id, client_id``), the indented lines below describe them.
    """
    raw = vars(cls).get("__doc__")
    if not raw:
        return "", {}
    lines = inspect.cleandoc(raw).splitlines()
    prose: list[str] = []
    entries: dict[str, list[str]] = {}
    i = 0
    current: list[str] | None = None
    in_attributes = False
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _is_rule(nxt.strip()):
            in_attributes = line.strip() == "Attributes"
            i += 2
            continue
        if not in_attributes:
            prose.append(line)
        elif line and not line[0].isspace():
            current = entries.setdefault(line.strip(), [])
        elif current is not None and line.strip():
            current.append(line.strip())
        i += 1
    text = "\n".join(prose).strip()
    return _markdown(text), {name: _markdown(" ".join(body)) for name, body in entries.items()}


# ---------------------------------------------------------------------------------------------
# types and defaults


def _constraints(t: Any) -> str:
    parts = []
    for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
                     ("max_length", "length <="), ("multiple_of", "multiple of")):
        value = getattr(t, attr, None)
        if value is not None:
            parts.append(f"{op} {value:g}" if isinstance(value, float) else f"{op} {value}")
    return (" " + ", ".join(parts)) if parts else ""


def _is_duration(types: tuple[Any, ...]) -> bool:
    # `str | int | float` is how the config spells a duration (engine.config.Duration).
    kinds = {type(t) for t in types if not isinstance(t, mi.NoneType)}
    return kinds == {mi.StrType, mi.IntType, mi.FloatType}


def render_type(t: Any, anchors: dict[type, str]) -> str:
    """A msgspec type as words: ``integer >= 1``, ``list of string``, ``duration or null``."""
    if isinstance(t, mi.Metadata):
        return render_type(t.type, anchors)
    if isinstance(t, mi.StrType):
        return "string" + _constraints(t)
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.IntType):
        return "integer" + _constraints(t)
    if isinstance(t, mi.FloatType):
        return "number" + _constraints(t)
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f"`{v}`" for v in t.values)
    if isinstance(t, mi.EnumType):
        return "one of " + ", ".join(f"`{m.value}`" for m in t.cls)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return f"list of {render_type(t.item_type, anchors)}" + _constraints(t)
    if isinstance(t, mi.DictType):
        return (f"mapping of {render_type(t.key_type, anchors)} to "
                f"{render_type(t.value_type, anchors)}")
    if isinstance(t, mi.StructType):
        anchor = anchors.get(t.cls)
        return f"[{t.cls.__name__}](#{anchor})" if anchor else t.cls.__name__
    if isinstance(t, mi.UnionType):
        if _is_duration(t.types):
            rest = [render_type(x, anchors) for x in t.types if isinstance(x, mi.NoneType)]
            return " or ".join(["duration", *rest])
        return " or ".join(render_type(x, anchors) for x in t.types)
    if isinstance(t, mi.AnyType):
        return "any"
    # Other msgspec types (datetime, UUID ...) by name: "DateTimeType" -> "datetime".
    return type(t).__name__.removesuffix("Type").lower()


def _meta_description(t: Any) -> str:
    """``Meta(description=...)`` of an annotated field type, if any."""
    if isinstance(t, mi.Metadata):
        return str((t.extra_json_schema or {}).get("description", "")) or _meta_description(t.type)
    return ""


def render_default(f: mi.Field) -> str:
    """``required``, or the default as YAML/JSON (a struct default: "its defaults")."""
    if f.required:
        return "required"
    value = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()  # type: ignore[misc]
    if isinstance(value, msgspec.Struct):
        return "its defaults"
    return f"`{msgspec.json.encode(msgspec.to_builtins(value)).decode()}`"


# ---------------------------------------------------------------------------------------------
# walking the structs


def _nested(t: Any, path: str) -> Iterator[tuple[mi.StructType, str]]:
    """Structs inside a field type, with the YAML path at which each one is written."""
    if isinstance(t, mi.Metadata):
        yield from _nested(t.type, path)
    elif isinstance(t, mi.StructType):
        yield t, path
    elif isinstance(t, mi.ListType):
        yield from _nested(t.item_type, path + "[]")
    elif isinstance(t, mi.DictType):
        yield from _nested(t.value_type, path + ".<key>")
    elif isinstance(t, mi.UnionType):
        for x in t.types:
            yield from _nested(x, path)


def sections(root: type = Config) -> list[_Section]:
    """Every struct reachable from ``root``, depth first in field order, each once."""
    out: list[_Section] = []
    seen: dict[type, _Section] = {}

    def visit(info: mi.StructType, path: str) -> None:
        if info.cls in seen:
            seen[info.cls].also.append(path)
            return
        section = _Section(path, info.cls, info)
        seen[info.cls] = section
        out.append(section)
        for f in info.fields:
            for sub, sub_path in _nested(f.type, f"{path}.{f.encode_name}" if path else f.encode_name):
                visit(sub, sub_path)

    top = mi.type_info(root)
    assert isinstance(top, mi.StructType)
    visit(top, "")
    return out


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _heading(section: _Section) -> str:
    where = f"`{section.path}`" if section.path else "Top level"
    return f"{where} ({section.cls.__name__})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "-"


def config_reference(root: type = Config) -> str:
    """The Markdown configuration reference of ``root`` (default: a whole configuration file)."""
    secs = sections(root)
    anchors = {s.cls: github_anchor(_heading(s)) for s in secs}
    out = [INTRO]
    out.append("## Contents\n")
    out.extend(f"- [{_heading(s)}](#{anchors[s.cls]})" for s in secs)
    out.append("")
    for s in secs:
        prose, entries = docstring_parts(s.cls)
        field_doc: dict[str, str] = {}
        notes: list[str] = []
        names = {f.encode_name for f in s.info.fields} | {f.name for f in s.info.fields}
        for entry, text in entries.items():
            keys = [k.strip() for k in entry.split(",")]
            if all(k in names for k in keys):
                for k in keys:
                    field_doc[k] = text
            else:
                notes.append(f"{entry}: {text}")
        out.append(f"## {_heading(s)}\n")
        if prose:
            out.append(prose + "\n")
        if s.also:
            out.append("Also written at " + ", ".join(f"`{p}`" for p in s.also) + ".\n")
        out.append("| key | type | default | description |")
        out.append("|---|---|---|---|")
        for f in s.info.fields:
            doc = (field_doc.get(f.encode_name) or field_doc.get(f.name)
                   or _meta_description(f.type))
            out.append(f"| `{f.encode_name}` | {_cell(render_type(f.type, anchors))} | "
                       f"{_cell(render_default(f))} | {_cell(doc)} |")
        out.append("")
        out.extend(f"{note}\n" for note in notes)
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# command


def _cmd_config(args: argparse.Namespace) -> int:
    text = config_reference()
    if args.out is None:
        if args.check:
            print("sloburn docs config: --check needs --out FILE", file=sys.stderr)
            return EXIT_FAIL
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.out)
    if args.check:
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as e:
            print(f"sloburn docs config: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return EXIT_FAIL
        if current != text:
            print(f"{path}: out of date with the configuration structs; run "
                  f"`sloburn docs config --out {path}`", file=sys.stderr)
            return EXIT_FAIL
        print(f"{path}: up to date")
        return EXIT_OK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"{path}: {len(text.splitlines())} lines")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``docs`` (with ``docs config``) to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("docs", help="write reference documentation from the code",
                              description="Write reference documentation from the code.")
    sub = p.add_subparsers(dest="docs_command", metavar="TOPIC")
    sub.required = True
    c = sub.add_parser("config", help="the configuration reference (Markdown)",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    c.add_argument("--out", "-o", metavar="FILE", help="write FILE instead of printing")
    c.add_argument("--check", action="store_true",
                   help="compare with FILE instead of writing it; exit 1 when it differs")
    c.set_defaults(func=_cmd_config)
