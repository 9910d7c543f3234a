"""`replicator redrive`: produce selected dead letters again to their origin topic, so that
the service reads them once more (after the cause is fixed: a schema registered, a rule
changed, a limit raised).

The run (the choices are in `redrive_logic`):

1. the dead-letter topic's partitions, their first retained offset and their real end are
   read once: the run stops at these ends (dead letters that arrive meanwhile are for the
   next run);
2. the selection's own progress group, `<group_id>.redrive.<selection fingerprint>`, says
   where a previous run of the same selection stopped (its committed offsets; none: the
   first retained offset);
3. the dead letters from there are read in order (a consumer that only `assign`s: no group
   membership), each one judged (`decide`); a selected one is produced to its origin topic
   and partition with its original key, value, timestamp and headers, plus `redrive.*`
   headers (`redrive_headers`), by an idempotent producer (`enable.idempotence`: a retry of
   the client never writes a record twice);
4. every `batch` dead letters, and at the end, the producer is flushed; only when every
   record given to it is acknowledged does the group commit the offsets read so far.

A crash (or a kill) between a flush and its commit leaves the batch acknowledged but not
committed: the next run of the same selection produces that batch again. At most `batch`
records (the ones flushed since the last commit) are then in the origin topic twice, at
two new offsets; docs/guarantees.md says what the stores then hold. A failure to deliver
stops the run before the commit (exit 3; run again). `--dry-run` reads from the same
committed offsets and writes nothing: no produce, no commit.

Test hook: `REPLICATOR_TEST_CRASH_AFTER=redrive:flushed` (or `redrive:committed`) makes the
process exit at once (`os._exit`, exit code `CRASH_EXIT`) after the first flush (or the
first commit), as a crash there would. Tests use it; nothing else sets it.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from replicator.config import Settings
from replicator.kafka.deadletter import Refusal, classify
from replicator.kafka.view import KafkaUnavailable, KafkaView
from replicator.logs import fields
from replicator.ops.context import Progress
from replicator.ops.cutover import CRASH_ENV, CRASH_EXIT
from replicator.ops.findings import utc_now
from replicator.ops.redrive_logic import (
    CANNOT,
    Letter,
    Selection,
    Tally,
    Verdict,
    decide,
    parse_letter,
    progress_group,
    redrive_headers,
)

log = logging.getLogger("replicator.redrive")

EXIT_DONE = 0
EXIT_CANNOT = 1
EXIT_UNAVAILABLE = 3
DEFAULT_BATCH = 1000
REDRIVE_STEPS = ("flushed", "committed")
_IDLE_S = 3.0  # a silence this long: the consumer's position is checked
_STALL_S = 60.0  # this long without a record below the end: Kafka is unavailable
_FLUSH_TIMEOUT_S = 60.0


def _crash_point(step: str) -> None:
    """The test hook (see the module's docstring)."""
    if os.environ.get(CRASH_ENV) == f"redrive:{step}":
        sys.stderr.write(f"{CRASH_ENV}=redrive:{step}: test hook, exiting after that step\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT)


def new_redrive_id() -> str:
    """A run's id: `redrive-` and 16 lowercase letters. No digit, so that no header of a
    re-driven record can ever look like a direct identifier to the service's guard."""
    return "redrive-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))


@dataclass
class RedriveOptions:
    selection: Selection = field(default_factory=Selection)
    dry_run: bool = False
    batch: int = DEFAULT_BATCH  # dead letters read between two commits at most


@dataclass
class PartitionRun:
    partition: int
    start: int  # the first dead-letter offset read
    end: int  # the end of the partition when the run began
    committed: int | None = None  # what this run committed last (None: nothing)
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "start": self.start,
            "end": self.end,
            "committed": self.committed,
            **({"note": self.note} if self.note else {}),
        }


@dataclass
class RedriveReport:
    options: RedriveOptions
    dead_letter_topic: str
    group: str
    redrive_id: str
    started_at: str = ""
    finished_at: str = ""
    elapsed_s: float = 0.0
    tally: Tally = field(default_factory=Tally)
    partitions: list[PartitionRun] = field(default_factory=list)
    produced: int = 0  # re-driven records acknowledged by Kafka
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "unavailable"
        if self.tally.cannot or self.tally.refused:
            return "incomplete"
        return "done"

    @property
    def exit_code(self) -> int:
        return {"done": EXIT_DONE, "incomplete": EXIT_CANNOT}.get(self.status, EXIT_UNAVAILABLE)

    def to_json(self) -> dict[str, Any]:
        t = self.tally
        return {
            "format": "replicator-redrive-report",
            "version": 1,
            "status": self.status,
            "exit_code": self.exit_code,
            "dry_run": self.options.dry_run,
            "selection": self.options.selection.to_json(),
            "dead_letter_topic": self.dead_letter_topic,
            "group": self.group,
            "redrive_id": None if self.options.dry_run else self.redrive_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_s": round(self.elapsed_s, 3),
            "counts": {
                "read": t.read,
                "without_origin": t.without_origin,
                "selected": t.selected,
                **t.verdicts,
                "produced": self.produced,
                "refused": len(t.refused),
            },
            "groups": t.groups(),
            "cannot": t.cannot,
            "refused": t.refused,
            "partitions": [p.to_json() for p in self.partitions],
            "error": self.error,
        }

    def summary(self, max_lines: int = 50) -> str:
        t = self.tally
        doing = "would re-drive" if self.options.dry_run else "re-driven"
        lines = [
            f"redrive{' (dry run: nothing written)' if self.options.dry_run else ''}: "
            f"{t.read:,} dead letter(s) read from {self.dead_letter_topic}, "
            f"{t.selected:,} selected, {t.verdicts[Verdict.REDRIVE.value]:,} {doing}, "
            f"{sum(t.verdicts[v.value] for v in CANNOT):,} cannot be re-driven "
            f"({self.elapsed_s:.1f} s)",
            f"  progress group {self.group}"
            + ("" if self.options.dry_run else f", run {self.redrive_id}"),
        ]
        if t.without_origin:
            lines.append(f"  {t.without_origin:,} record(s) without origin headers: skipped")
        shown = 0
        for g in t.groups():
            if shown < max_lines:
                offsets = ", ".join(
                    str(a) if a == b else f"{a}-{b}" for a, b in g["offsets"][:10]
                ) + (", ..." if len(g["offsets"]) > 10 else "")
                lines.append(
                    f"  {g['verdict']}: {g['reason']} {g['topic']}/{g['partition']}: "
                    f"{g['count']:,} (offsets {offsets})"
                )
            shown += 1
        for entry in [*t.cannot, *t.refused]:
            if shown < max_lines:
                lines.append(
                    f"  cannot re-drive {entry['topic']}/{entry['partition']} offset "
                    f"{entry['offset']} (dead letter {entry['dead_letter_partition']}/"
                    f"{entry['dead_letter_offset']}): {entry['cause']}"
                )
            shown += 1
        if shown > max_lines:
            lines.append(f"  ... and {shown - max_lines} more (see the JSON report)")
        if (t.cannot or t.refused) and not self.options.dry_run:
            lines.append(
                "  these are passed like the others: the same filters do not read them again; "
                "once the cause is fixed, re-drive each with --topic, --partition, "
                "--from-offset and --to-offset naming it"
            )
        if self.error:
            lines.append(f"stopped: {self.error}")
        verdict = {
            "done": "DONE",
            "incomplete": "INCOMPLETE: some selected dead letters cannot be re-driven",
            "unavailable": "STOPPED before the end: run again to go on",
        }[self.status]
        lines.append(f"result: {verdict} (exit {self.exit_code})")
        return "\n".join(lines)


class _Sender:
    """The idempotent producer of re-driven records, and what became of each."""

    def __init__(self, settings: Settings, tally: Tally) -> None:
        self._producer = Producer(
            {
                **settings.kafka_common(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "client.id": settings.client_id("replicator-redrive"),
            }
        )
        self._tally = tally
        self.acked = 0
        self.failed: list[str] = []

    def _delivered(self, letter: Letter, err: KafkaError | None) -> None:
        if err is None:
            self.acked += 1
        elif classify(err.code()) is Refusal.TRANSIENT:
            self.failed.append(f"{letter.origin_topic}/{letter.origin_partition}: {err.name()}")
        else:
            self._tally.refuse(letter, f"refused by the origin topic: {err.name()}")

    def send(self, letter: Letter, dead_letter_topic: str, redrive_id: str) -> None:
        while True:
            try:
                self._producer.produce(
                    letter.origin_topic,
                    value=letter.value,
                    key=letter.key,
                    partition=letter.origin_partition,
                    timestamp=letter.origin_timestamp_ms or 0,
                    headers=redrive_headers(letter, dead_letter_topic, redrive_id),
                    on_delivery=lambda err, _msg: self._delivered(letter, err),
                )
                break
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                code = error.code() if isinstance(error, KafkaError) else KafkaError._FAIL
                name = error.name() if isinstance(error, KafkaError) else str(exc)
                if classify(code) is Refusal.TRANSIENT:
                    raise KafkaUnavailable(
                        f"kafka: cannot produce to {letter.origin_topic}: {name}"
                    ) from None
                self._tally.refuse(letter, f"refused by the producer: {name}")
                break
        self._producer.poll(0)

    def flush(self) -> None:
        """Wait until every record given is acknowledged; KafkaUnavailable otherwise."""
        left = self._producer.flush(_FLUSH_TIMEOUT_S)
        if left or self.failed:
            what = (
                f"{left} record(s) not acknowledged within {_FLUSH_TIMEOUT_S:.0f} s" if left else ""
            )
            if self.failed:
                what = "; ".join(filter(None, [what, f"not delivered: {self.failed[0]}"]))
            raise KafkaUnavailable(
                f"kafka: re-driven records not all delivered ({what}): nothing committed "
                "past them; run again"
            )

    def close(self) -> None:
        self._producer.flush(5.0)


def _consumer(settings: Settings, group: str) -> Consumer:
    """Reads the dead-letter topic and commits the selection's progress: it only `assign`s
    (no group membership, no rebalance)."""
    return Consumer(
        {
            **settings.kafka_common(),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
            "fetch.queue.backoff.ms": 20,
            "client.id": settings.client_id("replicator-redrive"),
        }
    )


Record = tuple[int, int, bytes | None, bytes | None, Any]  # partition, offset, key, value, headers


def _read(consumer: Consumer, topic: str, runs: list[PartitionRun]) -> Iterator[Record]:
    """The records of each partition from its start until its end (exclusive) is reached.
    A partition whose last offsets hold no record ends once the position passes them."""
    left = {r.partition: r.end for r in runs if r.end > r.start}
    if not left:
        return
    try:
        consumer.assign(
            [TopicPartition(topic, r.partition, r.start) for r in runs if r.partition in left]
        )
    except KafkaException as exc:
        raise KafkaUnavailable(f"kafka: cannot read {topic}: {exc}") from None
    quiet_since = time.monotonic()
    while left:
        try:
            batch = consumer.consume(num_messages=1000, timeout=0.1)
        except KafkaException as exc:
            raise KafkaUnavailable(f"kafka: read failed: {exc}") from None
        if not batch:
            if time.monotonic() - quiet_since >= _IDLE_S:
                positions = consumer.position([TopicPartition(topic, p) for p in left])
                for tpo in positions:
                    if tpo.partition in left and tpo.offset >= left[tpo.partition]:
                        del left[tpo.partition]
                if left and time.monotonic() - quiet_since >= _STALL_S:
                    where = ", ".join(f"{topic}/{p} below {o}" for p, o in sorted(left.items()))
                    raise KafkaUnavailable(f"kafka: no record for {_STALL_S:.0f} s from {where}")
            continue
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF and err.fatal():
                    raise KafkaUnavailable(f"kafka: read failed: {err}")
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            stop = left.get(partition)
            if stop is None or offset >= stop:
                continue
            yield partition, offset, msg.key(), msg.value(), msg.headers()
            if offset + 1 >= stop:
                del left[partition]
        quiet_since = time.monotonic()


def _committed(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int | None]:
    try:
        answer = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    except KafkaException as exc:
        raise KafkaUnavailable(f"kafka: cannot read the committed offsets: {exc}") from None
    out: dict[int, int | None] = {}
    for tp in answer:
        if tp.error is not None:
            raise KafkaUnavailable(f"kafka: cannot read the committed offsets: {tp.error}")
        out[tp.partition] = tp.offset if tp.offset >= 0 else None
    return out


def _commit(consumer: Consumer, topic: str, offsets: dict[int, int]) -> None:
    if not offsets:
        return
    try:
        result = consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    except KafkaException as exc:
        raise KafkaUnavailable(f"kafka: cannot commit the re-drive's progress: {exc}") from None
    for tp in result or []:
        if tp.error is not None:
            raise KafkaUnavailable(f"kafka: cannot commit the re-drive's progress: {tp.error}")


def _replicated(view: KafkaView, settings: Settings) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic in settings.topics:
        try:
            out[topic] = view.partitions(topic)
        except KafkaUnavailable as exc:
            if "not found" not in str(exc):
                raise
    return out


def run_redrive(
    settings: Settings, options: RedriveOptions, progress: Progress | None = None
) -> RedriveReport:
    """The report; Kafka unavailable makes it 'unavailable' (what was committed before
    stays: a new run goes on from there), never raises. `progress` counts dead letters."""
    t0 = time.monotonic()
    topic = settings.dead_letter_topic
    selection = options.selection
    group = progress_group(settings.group_id, selection)
    report = RedriveReport(
        options=options,
        dead_letter_topic=topic,
        group=group,
        redrive_id=new_redrive_id(),
        started_at=utc_now(),
    )
    tally = report.tally
    batch = max(1, options.batch)
    sender: _Sender | None = None
    view = KafkaView(settings, "redrive")
    consumer = _consumer(settings, group)
    try:
        try:
            partitions = view.partitions(topic)
        except KafkaUnavailable as exc:
            if "not found" not in str(exc):
                raise
            partitions = []  # no dead-letter topic: no dead letter
        replicated = _replicated(view, settings)
        ends = view.ends([(topic, p) for p in partitions])
        committed = _committed(consumer, topic, partitions)
        for p in partitions:
            low = view.low((topic, p))
            held = committed.get(p)
            run = PartitionRun(p, low if held is None else max(held, low), ends[(topic, p)])
            if held is not None and held < low:
                run.note = f"committed offset {held} is behind retention: from {low}"
            report.partitions.append(run)
        by_partition = {r.partition: r for r in report.partitions}
        if progress is not None:
            progress.start(sum(max(0, r.end - r.start) for r in report.partitions))
        if not options.dry_run:
            sender = _Sender(settings, tally)
        pending: dict[int, int] = {}  # dead-letter partition -> next offset, not committed
        since_commit = 0
        first_commit = True

        def checkpoint() -> None:
            nonlocal since_commit, first_commit
            if sender is None or not pending:
                return
            sender.flush()
            report.produced = sender.acked
            if first_commit:
                _crash_point("flushed")
            _commit(consumer, topic, pending)
            for p, o in pending.items():
                by_partition[p].committed = o
            log.info("redrive_committed", extra=fields(group=group, offsets=dict(pending)))
            pending.clear()
            since_commit = 0
            if first_commit:
                first_commit = False
                _crash_point("committed")

        for partition, offset, key, value, headers in _read(consumer, topic, report.partitions):
            letter = parse_letter(partition, offset, key, value, headers)
            verdict = None if letter is None else decide(letter, selection, replicated)
            tally.add(letter, verdict)
            if verdict is Verdict.REDRIVE and sender is not None:
                assert letter is not None
                sender.send(letter, topic, report.redrive_id)
                if progress is not None:
                    progress.count("re-driven")
            elif verdict is Verdict.REDRIVE and progress is not None:
                progress.count("to re-drive")
            elif verdict in CANNOT and progress is not None:
                progress.count("cannot")
            pending[partition] = offset + 1
            since_commit += 1
            if progress is not None:
                progress.advance()
            if since_commit >= batch:
                checkpoint()
        checkpoint()
    except KafkaUnavailable as exc:
        report.error = str(exc)
    finally:
        if sender is not None:
            report.produced = max(report.produced, sender.acked)
            sender.close()
        consumer.close()
        view.close()
    report.elapsed_s = time.monotonic() - t0
    report.finished_at = utc_now()
    return report
