"""Types of the compiled extension (replicator/judge/_fastcheck.c)."""

from collections.abc import Sequence
from typing import Any

from replicator.model import RawRecord

YEARS: int
SLOTS: int

class _Program: ...

def compile(
    topic: str,
    verdict: tuple[int, str, str],
    ops: Sequence[tuple[int, int, int, int, int, int, bytes | None]],
    first_year: int,
    min_date_days: int,
    day_ms: int,
    year_start_ms: Sequence[int],
    lowest_day: Sequence[int],
    /,
) -> _Program: ...
def accept(
    programs: dict[int, _Program],
    items: list[tuple[str, bytes | None, int, int, bytes | None]],
    max_bytes: int,
    /,
) -> list[tuple[int, str, str] | None]: ...
def envelopes(
    records: Sequence[RawRecord], branches: Sequence[int], with_headers: bool, /
) -> list[bytes]: ...
def wire_payload(
    offsets: list[int],
    timestamps: list[int],
    keys: list[bytes | None],
    values: list[bytes | None],
    start: int,
    end: int,
    skip: dict[int, Any],
    branches: dict[int, int],
    empty_headers: bool,
    /,
) -> tuple[bytes, int, int | None, int | None] | None: ...
