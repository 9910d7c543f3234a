"""The monitoring files are valid for the real tools: the alert rules pass `promtool check
rules` and their unit tests (`promtool test rules`), every dashboard query parses as PromQL,
and every metric they name is one the service exports and docs/metrics.md describes.

promtool comes from Debian's `prometheus` package (`make setup`); without it these tests fail.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from replicator.telemetry.metrics import DEAD_LETTER_REASONS, ERROR_KINDS, OUTCOMES, Metrics
from tests.support.monitoring import (
    DASHBOARD,
    METRICS_DOC,
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES,
    alert_blocks,
    alert_names,
    dashboard,
    dashboard_links,
    dashboard_panels,
    dashboard_queries,
    metric_names,
    promtool,
    referenced_metrics,
    rules_with_for,
    runbook_anchors,
    substitute,
)

REQUIRED_ALERTS = {
    "ReplicatorNoReplicaUp",  # silence: no target up, or none at all
    "ReplicatorReplicaNotReady",
    "ReplicatorStoreNoCommit",  # no commit for a store while its lag grows
    "ReplicatorStoreLagHigh",  # lag in seconds over a threshold for a while
    "ReplicatorStoreDown",
    "ReplicatorStoreConflict",
    "ReplicatorDeadLettersRising",
    "ReplicatorNoProgress",  # no progress while lag > 0
}


def test_the_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = RULE_TESTS.read_text()
    for name in alert_names():
        assert re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", tests), (
            f"{name} is never shown firing in {RULE_TESTS.name}"
        )
        assert re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", tests), (
            f"{name} is never shown silent in {RULE_TESTS.name}"
        )


def test_every_alert_has_a_runbook_section_and_every_dashboard_link_finds_one() -> None:
    anchors = runbook_anchors()
    for name in alert_names():
        assert name.lower() in anchors, f"docs/runbook.md has no section {name}"
    links = dashboard_links()
    assert ("dashboard", "${runbook}") in links
    linked = set()
    for where, url in links:
        if where == "dashboard":
            continue
        base, _, anchor = url.partition("#")
        assert base == "${runbook}" and anchor in anchors, (where, url)
        linked.add(anchor)
    assert len(linked) >= 8, linked
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["runbook"]["type"] == "constant"
    assert variables["runbook"]["query"] == "docs/runbook.md"  # the chart replaces it


def test_the_required_alerts_exist_with_severity_summary_and_runbook() -> None:
    blocks = alert_blocks()
    assert set(blocks) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(blocks)
    for name, block in blocks.items():
        assert re.search(r"severity: (warning|critical)\n", block), name
        assert "summary:" in block, name
        runbook = re.search(r"runbook: >-\n((?:\s{12}.*\n?)+)", block)
        assert runbook, f"{name}: no runbook annotation"
        text = " ".join(runbook.group(1).split())
        assert text.startswith("Means: ") and " Do: " in text, f"{name}: {text[:80]}"


def test_the_local_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_a_rules_copy_with_short_for_differs_only_in_for(tmp_path: Path) -> None:
    copy = tmp_path / "rules.yml"
    copy.write_text(rules_with_for("5s"))
    result = promtool("check", "rules", copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_title, expr) in enumerate(queries):
        lines.append(f"      - record: dashboard:query{i}")
        lines.append("        expr: |")
        lines.extend(f"          {line}" for line in substitute(expr).splitlines())
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_dashboard_has_the_required_panels_and_variables() -> None:
    data = dashboard()
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert {"datasource", "namespace", "job", "store", "topic"} <= set(variables)
    for name in ("namespace", "job", "store", "topic"):
        assert variables[name]["includeAll"] and variables[name]["multi"]
    assert '{namespace=~"$namespace"}' in variables["job"]["query"]["query"]
    queries = dashboard_queries()
    text = "\n".join(expr for _, expr in queries)
    # the release (namespace, job) reaches every query; store and topic every lag query
    for _title, expr in queries:
        for selector in re.findall(r"\b[a-z_]+\{[^}]*\}", expr):
            assert 'namespace=~"$namespace", job=~"$job"' in selector, (selector, expr)
        if "replicator_store_lag_" in expr:
            assert 'store=~"$store"' in expr and 'topic=~"$topic"' in expr, expr
    wanted = {
        "lag records per store": "sum by (store) (max by (store, topic, partition) "
        "(replicator_store_lag_records",
        "lag records per partition": "max by (store, topic, partition) "
        "(replicator_store_lag_records",
        "lag seconds per store": "max by (store) (replicator_store_lag_seconds",
        "lag seconds per partition": "max by (store, topic, partition) "
        "(replicator_store_lag_seconds",
        "throughput": "rate(replicator_records_written_total",
        "put latency p50": "histogram_quantile(0.5, sum by (store, le) "
        "(rate(replicator_put_duration_seconds_bucket",
        "put latency p99": "histogram_quantile(0.99,",
        "errors": "rate(replicator_store_errors_total",
        "dead letters by reason": "sum by (reason) (rate(replicator_dead_letter_records_total",
        "store up": "min by (store) (replicator_store_up",
        "catch-up time": "deriv(replicator_store_committed_offset",
        "replicas up": "sum(up{",
        "replicas ready": "sum(replicator_ready{",
        "CPU": "rate(process_cpu_seconds_total{",
        "memory": "process_resident_memory_bytes{",
        "freshness of puts": "time() - max by (store) (replicator_store_last_put_timestamp",
        "freshness of commits": "time() - max by (store) (replicator_store_last_commit_times",
        "records consumed per topic": "sum by (topic) (rate(replicator_records_consumed_total",
        "rebalances": "increase(replicator_rebalances_total",
        "owned partitions": "replicator_assigned_partitions",
        "client lag": "replicator_kafka_consumer_lag_records",
        "fetch queue": "replicator_kafka_fetch_queue_records",
        "broker round trip": "replicator_kafka_broker_rtt_seconds",
    }
    for what, fragment in wanted.items():
        assert fragment in text, f"no query for {what}"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_metric_named_in_rules_and_dashboard_is_exported() -> None:
    known = metric_names()
    for path in (RULES, DASHBOARD):
        unknown = referenced_metrics(path.read_text()) - known
        assert not unknown, f"{path.name} names metrics the service does not export: {unknown}"


def test_the_metrics_reference_describes_every_metric() -> None:
    doc = METRICS_DOC.read_text()
    for family in Metrics().registry.collect():
        if not family.name.startswith("replicator_"):
            continue
        name = {"counter": family.name + "_total", "info": family.name + "_info"}.get(
            family.type, family.name
        )
        assert f"`{name}`" in doc, f"docs/metrics.md does not describe {name}"
    for alert in alert_names():
        assert alert in doc, f"docs/metrics.md does not list the alert {alert}"
    for value in (*OUTCOMES, *DEAD_LETTER_REASONS, *ERROR_KINDS):
        assert f"`{value}`" in doc, f"docs/metrics.md does not name the label value {value}"


def test_the_exported_metrics_pass_promtool_lint() -> None:
    metrics = Metrics(stores=["s3", "azure"], topics=["snds.reimbursements"])
    metrics.put_seconds.labels("s3").observe(0.02)
    metrics.chunk_records.observe(500)
    metrics.chunk_bytes.observe(65536)
    metrics.lag_records.labels("s3", "snds.reimbursements", "0").set(3)
    metrics.lag_seconds.labels("s3", "snds.reimbursements", "0").set(1.5)
    text = generate_latest(metrics.registry).decode()
    result = promtool("check", "metrics", input_text=text)
    assert result.returncode == 0, result.stdout + result.stderr
