"""Every long command speaks JSON and shows progress: `--json` prints the report on standard
output (byte for byte what `--output` writes), the human summary and the progress lines go
to standard error (not a terminal here: plain lines, the last one at the end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.config import Settings
from tests.support.ops import cli, keys, ops, replicate
from tests.support.produce import produce_records

pytestmark = pytest.mark.integration


def run_json(settings: Settings, out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = cli(settings, *args, "--json", "--output", str(out))
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert out.read_text() == result.stdout  # the same bytes
    return result.returncode, data, result.stderr


def test_verify_replay_and_repair_report_json_on_stdout_and_in_a_file(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(chunk_max_records=100)
    produced = produce_records(settings, count=600, bad_share=0.02, seed=81)
    replicate(settings, produced.ends)
    tps = sorted(produced.ends)

    code, report, err = run_json(settings, tmp_path / "v.json", "verify")
    assert code == 0 and report["status"] == "aligned"
    assert f"verify: {len(tps)}/{len(tps)} partitions (100%)" in err  # the last progress line
    assert "objects listed" in err
    assert err.splitlines()[-1].startswith("result: ALIGNED")  # the summary, on stderr

    # The older option name still writes the file.
    old = tmp_path / "old.json"
    result = cli(settings, "verify", "--json-report", str(old))
    assert result.returncode == 0
    assert json.loads(old.read_text())["status"] == "aligned"
    assert "verify:" in result.stdout  # without --json, the summary is on stdout

    lost = tps[0]
    with ops(settings) as ctx:
        gone = keys(ctx, "s3", lost)
        for key in gone:
            ctx.stores["s3"].delete(key)

    code, report, err = run_json(settings, tmp_path / "v2.json", "verify")
    assert code == 1 and report["status"] == "diverged"

    code, report, err = run_json(
        settings,
        tmp_path / "r.json",
        "replay",
        "--store",
        "s3",
        "--topic",
        lost[0],
        "--partition",
        str(lost[1]),
    )
    assert code == 0
    assert report["format"] == "replicator-replay-report"
    assert report["partitions"][0]["written"]["s3"] == gone
    assert "replay: 1/1 partitions (100%)" in err and "records read" in err

    with ops(settings) as ctx:
        ctx.stores["azure"].delete(gone[0])
    code, report, err = run_json(settings, tmp_path / "fix.json", "verify", "--repair")
    assert code == 0 and report["status"] == "aligned"
    assert report["repair"]["before"]["status"] == "diverged"
    assert [a["outcome"] for r in report["repair"]["rounds"] for a in r] == ["done"]


def test_produce_reports_json(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_factory()
    out = tmp_path / "p.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "replicator",
            "produce",
            "--bootstrap",
            settings.kafka_bootstrap,
            # the demo topics (the ones the schemas are registered for): the session's
            # stack has them
            "--count",
            "300",
            "--bad-share",
            "0.1",
            "--seed",
            "5",
            "--json",
            "--output",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert out.read_text() == result.stdout
    assert report["delivered"] == 300 and report["failed"] == 0
    assert report["good"] + report["bad"] == 300
    assert len(report["bad_records"]) == report["bad"]
    assert sum(report["per_topic"].values()) == 300
    assert {e["topic"] for e in report["end_offsets"]} == set(report["per_topic"])
    assert "produce: 300/300 records delivered (100%)" in result.stderr


def test_output_into_a_missing_folder_is_refused_before_any_work(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    result = cli(settings_factory(), "verify", "--output", str(tmp_path / "no" / "r.json"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
