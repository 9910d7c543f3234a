"""The fault matrix's table, printed once at the end of the test session.

Each fault test records its row on its own report (`record_property("fault_row", ...)`):
reports travel from pytest-xdist's workers to the process that prints the summary, where a
module-level dict or a fixture's teardown in a worker would print nowhere. tests/conftest.py
prints the table from the reports (`pytest_terminal_summary`) and writes it to
$REPLICATOR_FAULTS_TABLE if set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

PROPERTY = "fault_row"


@dataclass
class Row:
    runs: int = 0
    lost: int = 0
    doubled: int = 0
    divergent: int = 0
    conflicts: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def clean(self) -> bool:
        return self.lost == self.doubled == self.divergent == self.conflicts == 0

    def as_property(self, fault: str) -> dict[str, Any]:
        return {"fault": fault, **asdict(self)}


def rows_of(properties: Iterable[tuple[str, object]]) -> list[tuple[str, Row]]:
    """The rows among a report's user properties."""
    out = []
    for name, value in properties:
        if name == PROPERTY and isinstance(value, dict):
            values = dict(value)
            fault = str(values.pop("fault"))
            out.append((fault, Row(**values)))
    return out


def table(rows: Iterable[tuple[str, Row]]) -> str:
    head = f"{'fault':<34}{'runs':>5}{'lost':>7}{'doubled':>9}{'divergent':>11}"
    head += f"{'conflicts':>11}{'seconds':>9}"
    lines = [head, "-" * len(head)]
    for name, row in rows:
        lines.append(
            f"{name:<34}{row.runs:>5}{row.lost:>7}{row.doubled:>9}{row.divergent:>11}"
            f"{row.conflicts:>11}{row.seconds:>9.1f}"
        )
    return "\n".join(lines)
