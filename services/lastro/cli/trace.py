"""`lastro trace show <trace-id>` and `lastro trace list`: the spans every process of
the dev stack wrote to its JSON-lines file (``LASTRO_TRACES_DIR``, by default
``.dev/traces``; ``core.observability.file_span_exporter``), drawn as one tree across
processes with each span's start offset and duration."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lastro.core.config import load_settings

# Attributes worth a glance on a span's line, in this order.
_SHOWN = (
    "http.route",
    "url.path",
    "server.port",
    "http.response.status_code",
    "messaging.destination.name",
    "messaging.consumer.group.name",
)


def register(sub: Any) -> None:
    trace = sub.add_parser("trace", help="traces the dev stack's processes wrote")
    actions = trace.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="one trace as a tree of spans across processes")
    show.add_argument("trace_id", help="32 hex digits (the trace_id of a log line)")
    show.set_defaults(func=run_show)
    recent = actions.add_parser("list", help="the most recent traces and their root spans")
    recent.add_argument("-n", "--lines", type=int, default=20)
    recent.set_defaults(func=run_list)
    for parser in (show, recent):
        parser.add_argument("--dir", type=Path, help="trace files (default: the stack's)")


@dataclass
class SpanNode:
    record: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)

    @property
    def start(self) -> int:
        return int(self.record["start_ns"])

    @property
    def duration_ms(self) -> float:
        return (int(self.record["end_ns"]) - self.start) / 1e6


def trace_files(directory: Path) -> list[Path]:
    """Every process's file, rotated ones (``*.jsonl.1``) included."""
    return sorted([*directory.glob("*.jsonl"), *directory.glob("*.jsonl.1")])


def read_spans(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every span record in ``files``; a torn last line (a process writing) is skipped."""
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("trace_id"):
                    yield record


def build_tree(spans: Iterable[dict[str, Any]]) -> list[SpanNode]:
    """The spans as trees: children under their parent, ordered by start; spans whose
    parent is not in the files (a client outside the stack) are roots."""
    nodes = {str(s["span_id"]): SpanNode(s) for s in spans}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(str(node.record.get("parent_span_id")))
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start)
    return sorted(roots, key=lambda n: n.start)


def _describe(record: dict[str, Any]) -> str:
    attributes = record.get("attributes") or {}
    shown = [f"{key}={attributes[key]}" for key in _SHOWN if key in attributes]
    status = " ERROR" if record.get("status") == "ERROR" else ""
    return f"{record['name']}{status}" + (f"  [{', '.join(shown)}]" if shown else "")


def render_trace(trace_id: str, roots: list[SpanNode]) -> str:
    """The tree, one span a line: offset from the trace's start, duration, process, kind."""
    if not roots:
        return f"trace {trace_id}: no spans found"
    every = list(_walk(roots))
    origin = min(node.start for node, _ in every)
    end = max(int(node.record["end_ns"]) for node, _ in every)
    services = {str(node.record.get("service", "")) for node, _ in every}
    lines = [
        f"trace {trace_id}: {len(every)} spans in {len(services)} processes, "
        f"{(end - origin) / 1e6:.1f} ms",
        f"{'start ms':>9} {'took ms':>9}  {'process':<26}{'kind':<9}span",
    ]
    for node, prefix in every:
        record = node.record
        lines.append(
            f"{(node.start - origin) / 1e6:>9.1f} {node.duration_ms:>9.1f}  "
            f"{record.get('service', '')!s:<26}{record.get('kind', '')!s:<9}"
            f"{prefix}{_describe(record)}"
        )
    return "\n".join(lines)


def _walk(roots: list[SpanNode]) -> Iterator[tuple[SpanNode, str]]:
    def visit(node: SpanNode, indent: str, last: bool, top: bool) -> Iterator[tuple[SpanNode, str]]:
        yield node, "" if top else indent + ("└─ " if last else "├─ ")
        below = indent if top else indent + ("   " if last else "│  ")
        for index, child in enumerate(node.children):
            yield from visit(child, below, index == len(node.children) - 1, False)

    for root in roots:
        yield from visit(root, "", True, True)


def _directory(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    from lastro.devstack.components import traces_dir

    return traces_dir(load_settings())


def run_show(args: argparse.Namespace) -> int:
    trace_id = args.trace_id.strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        print("a trace id is 32 hex digits", file=sys.stderr)
        return 2
    spans = [s for s in read_spans(trace_files(_directory(args))) if s["trace_id"] == trace_id]
    print(render_trace(trace_id, build_tree(spans)))
    return 0 if spans else 1


def run_list(args: argparse.Namespace) -> int:
    """The newest traces: id, when, span count and the first span's description."""
    traces: dict[str, list[dict[str, Any]]] = {}
    for span in read_spans(trace_files(_directory(args))):
        traces.setdefault(str(span["trace_id"]), []).append(span)
    newest = sorted(traces.items(), key=lambda t: -min(int(s["start_ns"]) for s in t[1]))
    for trace_id, spans in newest[: args.lines]:
        first = min(spans, key=lambda s: int(s["start_ns"]))
        print(f"{trace_id}  {len(spans):>4} spans  {first.get('service', '')}: {_describe(first)}")
    return 0
