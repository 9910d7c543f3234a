"""The monitoring files (monitoring/) as the tests read them, and the Debian Prometheus tools.

Tests that need `promtool` or `prometheus` fail (never skip) when they are missing:
`make setup` installs Debian's `prometheus` package, which holds both.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from replicator.telemetry.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "alerts.rules.yml"
RULE_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"

# Values given to the dashboard's template variables when its queries run outside Grafana.
DEFAULT_VARIABLES = {
    "namespace": ".*",
    "job": ".*",
    "store": ".*",
    "topic": ".*",
    "__rate_interval": "1m",
}
RUNBOOK = REPO / "docs" / "runbook.md"

_FOR = re.compile(r"^(\s*)for: *\S+( *#.*)?$", re.MULTILINE)


def tool(name: str) -> str:
    """The path of a Prometheus tool; an AssertionError (a failure, not a skip) without it."""
    path = shutil.which(name)
    assert path is not None, (
        f"`{name}` not found: `make setup` installs it (Debian package `prometheus`; "
        "`apt-get install -y --no-install-recommends prometheus`)"
    )
    return path


def promtool(
    *args: str | Path, cwd: Path | None = None, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        input=input_text,
        check=False,
    )


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana's variables ($name, ${name}) by values, as Grafana would."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: *(\S+)", RULES.read_text(), re.MULTILINE)


def alert_blocks() -> dict[str, str]:
    """The text of each alert rule of the rules file, by alert name."""
    text = RULES.read_text()
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*- alert: *(\S+)", text, re.M)]
    ends = [s for s, _ in starts[1:]] + [len(text)]
    return {name: text[start:end] for (start, name), end in zip(starts, ends, strict=True)}


def rules_with_for(duration: str) -> str:
    """The rules file with every `for:` set to `duration`, and nothing else changed: a test
    cannot wait the production durations (minutes), but must evaluate the same expressions."""
    original = RULES.read_text()
    rendered = _FOR.sub(lambda m: f"{m.group(1)}for: {duration}{m.group(2) or ''}", original)
    before, after = original.splitlines(), rendered.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed, "the rules file has no `for:` to shorten"
    assert all(a.strip().startswith("for:") and b.strip().startswith("for:") for a, b in changed)
    return rendered


def metric_names() -> set[str]:
    """Every series name the service can export (histograms with their _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in Metrics(stores=["s3"], topics=["t"]).registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "info":
            names.add(family.name + "_info")
    return names


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\breplicator_[a-z_]+\b", text))


def runbook_anchors() -> set[str]:
    """The anchors of docs/runbook.md's headings, as Git hosts make them (lower case, spaces
    to hyphens, punctuation dropped)."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        heading = re.match(r"#+ +(.+)$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(slug.replace(" ", "-"))
    return anchors


def dashboard_links() -> list[tuple[str, str]]:
    """(where, url) of every link of the dashboard and of its panels."""
    out = [("dashboard", link["url"]) for link in dashboard().get("links", [])]
    for panel in dashboard_panels():
        out.extend((panel["title"], link["url"]) for link in panel.get("links", []))
    return out
