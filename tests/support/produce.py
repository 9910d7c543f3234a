"""Produce a workload for a test with the product's own producer, and remember what it sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from replicator.config import Settings
from replicator.produce import produce
from replicator.schemas import SchemaRegistry

TP = tuple[str, int]


@dataclass
class Produced:
    total: int = 0
    ends: dict[TP, int] = field(default_factory=dict)  # next offset after the last record
    bad: set[tuple[TP, int]] = field(default_factory=set)
    bad_kinds: dict[tuple[TP, int], str] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Produced:
        return cls()

    def merge(self, other: Produced) -> Produced:
        ends = dict(self.ends)
        for tp, end in other.ends.items():
            ends[tp] = max(ends.get(tp, 0), end)
        return Produced(
            total=self.total + other.total,
            ends=ends,
            bad=self.bad | other.bad,
            bad_kinds={**self.bad_kinds, **other.bad_kinds},
        )


def produce_records(
    settings: Settings,
    count: int,
    bad_share: float,
    seed: int,
    bad_kinds: list[str] | None = None,
) -> Produced:
    report = produce(
        settings.kafka_common(),
        settings.topics,
        count,
        None,
        seed,
        bad_share,
        bad_kinds,
        SchemaRegistry.load(settings.schemas_dir),
        schema_topics=dict(settings.schema_topics),
    )
    assert report.delivered == count and report.failed == 0, report
    return Produced(
        total=count,
        ends=dict(report.end_offsets),
        bad={((b.topic, b.partition), b.offset) for b in report.bad_records},
        bad_kinds={((b.topic, b.partition), b.offset): b.kind for b in report.bad_records},
    )
