"""An independent checker: reads Kafka and both stores with the SDKs and fastavro directly,
and counts what the replicator lost, doubled or wrote differently. It shares no code with the
service (no replicator.* import beyond nothing), so a bug there cannot hide here."""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import json
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import fastavro
from azure.storage.blob import BlobServiceClient
from botocore.config import Config
from confluent_kafka import Consumer, TopicPartition

from replicator.model import TP

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def writer_schemas() -> dict[int, Any]:
    registry = json.loads((SCHEMAS / "registry.json").read_text())
    return {
        int(i): fastavro.parse_schema(json.loads((SCHEMAS / e["file"]).read_text()))
        for i, e in registry.items()
    }


@dataclass
class KafkaRecord:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: dict[str, bytes]


def read_topic(
    bootstrap: str, topic: str, partitions: int, idle_s: float = 2.0
) -> dict[TP, list[KafkaRecord]]:
    """Every record of the topic, by partition, read from offset 0 until `idle_s` of silence."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "independent-checker",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[TP, list[KafkaRecord]] = {(topic, p): [] for p in range(partitions)}
    last = time.monotonic()
    while time.monotonic() - last < idle_s:
        for msg in consumer.consume(1000, timeout=0.2):
            if msg.error():
                continue
            last = time.monotonic()
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            headers: dict[str, bytes] = {}
            for item in msg.headers() or []:
                headers[str(item[0])] = item[1] if isinstance(item[1], bytes) else b""
            out[(topic, partition)].append(
                KafkaRecord(offset, msg.key(), msg.value(), msg.timestamp()[1], headers)
            )
    consumer.close()
    return out


def decode_value(value: bytes, schemas: dict[int, Any]) -> dict[str, Any] | None:
    """The event in a Confluent wire-format value, or None if it is not a decodable one."""
    if value is None or len(value) < 5 or value[0] != 0:
        return None
    schema = schemas.get(int.from_bytes(value[1:5], "big"))
    if schema is None:
        return None
    buf = io.BytesIO(value[5:])
    try:
        record = fastavro.schemaless_reader(buf, schema, None)
    except Exception:
        return None
    if buf.tell() != len(value) - 5:
        return None
    assert isinstance(record, dict)
    return record


def s3_objects(env: dict[str, str], bucket: str, prefix: str = "replicator/") -> dict[str, bytes]:
    s3 = boto3.client(
        "s3",
        endpoint_url=env["s3_endpoint"],
        aws_access_key_id=env["s3_access_key"],
        aws_secret_access_key=env["s3_secret_key"],
        region_name="fr-par",
        config=Config(s3={"addressing_style": "path"}),
    )
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert obj["ETag"].strip('"') == hashlib.md5(body).hexdigest(), obj["Key"]
            out[obj["Key"][len(prefix) :]] = body
    return out


def azure_objects(
    env: dict[str, str], container: str, prefix: str = "replicator/"
) -> dict[str, bytes]:
    client = BlobServiceClient.from_connection_string(env["azure_connection_string"])
    cont = client.get_container_client(container)
    out: dict[str, bytes] = {}
    for blob in cont.list_blobs(name_starts_with=prefix):
        body = cont.download_blob(blob.name).readall()
        md5 = blob.content_settings.content_md5
        assert md5 is not None and bytes(md5) == hashlib.md5(body).digest(), blob.name
        out[blob.name[len(prefix) :]] = body
    return out


def md5s(objects: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(hashlib.md5(v).digest()).decode() for k, v in objects.items()}


@dataclass
class StoreContent:
    records: dict[TP, dict[int, dict[str, Any]]] = field(default_factory=dict)
    doubled: list[tuple[TP, int]] = field(default_factory=list)
    ranges: dict[TP, list[tuple[int, int]]] = field(default_factory=dict)


def decode_objects(objects: dict[str, bytes]) -> StoreContent:
    """Every record in every object, by partition and offset; an offset seen twice is doubled."""
    content = StoreContent()
    for key, body in sorted(objects.items()):
        reader = fastavro.reader(io.BytesIO(body))
        meta = reader.metadata
        tp = (meta["replicator.topic"], int(meta["replicator.partition"]))
        first, last = int(meta["replicator.first_offset"]), int(meta["replicator.last_offset"])
        assert key.endswith(f"{first:020d}-{last:020d}.avro"), key
        content.ranges.setdefault(tp, []).append((first, last))
        per = content.records.setdefault(tp, {})
        for rec in reader:
            assert isinstance(rec, dict)
            off = rec["offset"]
            assert first <= off <= last, (key, off)
            if off in per:
                content.doubled.append((tp, off))
            per[off] = rec
    for tp, ranges in content.ranges.items():
        ranges.sort()
        covered: Counter[int] = Counter()
        for first, last in ranges:
            for o in range(first, last + 1):
                covered[o] += 1
        content.doubled.extend(
            (tp, o) for o, n in covered.items() if n > 1 and (tp, o) not in content.doubled
        )
    return content


@dataclass
class Verdict:
    lost: list[tuple[TP, int]]
    doubled: list[tuple[TP, int]]
    altered: list[tuple[TP, int]]
    unexpected: list[tuple[TP, int]]


def compare(
    kafka: dict[TP, list[KafkaRecord]], content: StoreContent, bad: set[tuple[TP, int]]
) -> Verdict:
    """Record-for-record: every good Kafka record is in the store once, with the same key,
    timestamp and event; no bad record and nothing else is."""
    schemas = writer_schemas()
    lost, altered, unexpected = [], [], []
    for tp, records in kafka.items():
        stored = content.records.get(tp, {})
        expected_offsets = set()
        for r in records:
            if (tp, r.offset) in bad:
                if r.offset in stored:
                    unexpected.append((tp, r.offset))
                continue
            expected_offsets.add(r.offset)
            got = stored.get(r.offset)
            if got is None:
                lost.append((tp, r.offset))
                continue
            value = decode_value(r.value, schemas) if r.value is not None else None
            if (
                got["key"] != r.key
                or int(got["timestamp"].timestamp() * 1000) != r.timestamp_ms
                or _norm(got["value"]) != _norm(value)
            ):
                altered.append((tp, r.offset))
        unexpected.extend(
            (tp, o) for o in stored if o not in expected_offsets and (tp, o) not in bad
        )
    return Verdict(lost, content.doubled, altered, unexpected)


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


# ---------------------------------------------------------------------- streaming check
# For millions of records (benchmarks/soak.py): nothing above holds less than every record and
# every object in memory. Below, each record is reduced to an 8-byte digest of what the check
# compares (key, timestamp, decoded event), kept in two flat arrays per partition (offsets and
# digests, 16 bytes a record), and the stores are read one object at a time.


def record_digest(key: bytes | None, timestamp_ms: int, value: Any) -> int:
    """64 bits of BLAKE2b over what `compare` compares: key, timestamp, event (normalised)."""
    blob = json.dumps(
        [key.hex() if key is not None else None, timestamp_ms, value],
        default=str,
        sort_keys=True,
    ).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


@dataclass
class PartitionDigests:
    """One partition as read from Kafka: offsets in order and each record's digest (0 for a
    record the check expects in no store: bad, or undecodable)."""

    offsets: array[int] = field(default_factory=lambda: array("q"))
    digests: array[int] = field(default_factory=lambda: array("Q"))

    def index(self, offset: int) -> int | None:
        i = bisect.bisect_left(self.offsets, offset)
        return i if i < len(self.offsets) and self.offsets[i] == offset else None


def digest_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    bad: set[tuple[TP, int]],
    ends: dict[TP, int] | None = None,
    idle_s: float = 5.0,
) -> dict[TP, PartitionDigests]:
    """Every record of the topics, read from offset 0, as digests. Stops when every partition
    reached `ends` (next offsets), or after `idle_s` of silence."""
    schemas = writer_schemas()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "independent-checker",
            "enable.auto.commit": False,
            "queued.max.messages.kbytes": 16384,  # prefetch: 16 MiB, not librdkafka's 64
        }
    )
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
    out = {(t, p): PartitionDigests() for t in topics for p in range(partitions)}
    todo = {tp: end for tp, end in (ends or {}).items() if end > 0}
    last = time.monotonic()
    while time.monotonic() - last < idle_s and (ends is None or todo):
        for msg in consumer.consume(1000, timeout=0.2):
            if msg.error():
                continue
            last = time.monotonic()
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            tp = (topic, partition)
            part = out[tp]
            if part.offsets and offset <= part.offsets[-1]:
                continue  # read again after a reconnect
            value = msg.value()
            event = decode_value(value, schemas) if value is not None else None
            if (tp, offset) in bad or event is None:
                digest = 0
            else:
                digest = record_digest(msg.key(), msg.timestamp()[1], event)
            part.offsets.append(offset)
            part.digests.append(digest)
            if tp in todo and offset + 1 >= todo[tp]:
                del todo[tp]
    consumer.close()
    return out


def iter_s3_objects(
    env: dict[str, str], bucket: str, prefix: str = "replicator/"
) -> Iterator[tuple[str, bytes]]:
    """(key without prefix, body) of every object, one at a time, the ETag checked."""
    s3 = boto3.client(
        "s3",
        endpoint_url=env["s3_endpoint"],
        aws_access_key_id=env["s3_access_key"],
        aws_secret_access_key=env["s3_secret_key"],
        region_name="fr-par",
        config=Config(s3={"addressing_style": "path"}),
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert obj["ETag"].strip('"') == hashlib.md5(body).hexdigest(), obj["Key"]
            yield obj["Key"][len(prefix) :], body


def iter_azure_objects(
    env: dict[str, str], container: str, prefix: str = "replicator/"
) -> Iterator[tuple[str, bytes]]:
    """(name without prefix, body) of every blob, one at a time, the Content-MD5 checked."""
    client = BlobServiceClient.from_connection_string(env["azure_connection_string"])
    cont = client.get_container_client(container)
    for blob in cont.list_blobs(name_starts_with=prefix):
        body = cont.download_blob(blob.name).readall()
        md5 = blob.content_settings.content_md5
        assert md5 is not None and bytes(md5) == hashlib.md5(body).digest(), blob.name
        yield blob.name[len(prefix) :], body


@dataclass
class StoreCount:
    objects: int
    records: int
    doubled: int  # offsets covered by more than one object
    md5: dict[str, str]  # key -> MD5 hex, for the comparison of the two stores


class StreamingCheck:
    """Counts, store after store, records lost (missing, altered, or not expected there:
    bad, or not in Kafka) and offsets doubled, in memory bounded by the Kafka digests plus
    one byte a record (`missing`: flags of records not found intact in some store)."""

    def __init__(self, kafka: dict[TP, PartitionDigests]) -> None:
        self.kafka = kafka
        self.missing = {tp: bytearray(len(p.offsets)) for tp, p in kafka.items()}
        self.unexpected: set[tuple[TP, int]] = set()

    def store(self, objects: Iterator[tuple[str, bytes]]) -> StoreCount:
        seen = {tp: bytearray(len(p.offsets)) for tp, p in self.kafka.items()}
        ranges: dict[TP, list[tuple[int, int]]] = {}
        md5: dict[str, str] = {}
        records = 0
        for key, body in objects:
            md5[key] = hashlib.md5(body).hexdigest()
            reader = fastavro.reader(io.BytesIO(body))
            meta = reader.metadata
            tp = (meta["replicator.topic"], int(meta["replicator.partition"]))
            first, last = int(meta["replicator.first_offset"]), int(meta["replicator.last_offset"])
            assert key.endswith(f"{first:020d}-{last:020d}.avro"), key
            ranges.setdefault(tp, []).append((first, last))
            part = self.kafka.get(tp)
            flags = seen.get(tp)
            for rec in reader:
                assert isinstance(rec, dict)
                records += 1
                off = rec["offset"]
                assert first <= off <= last, (key, off)
                i = part.index(off) if part is not None else None
                if part is None or flags is None or i is None or part.digests[i] == 0:
                    self.unexpected.add((tp, off))
                    continue
                flags[i] = min(flags[i] + 1, 255)
                stamp = int(rec["timestamp"].timestamp() * 1000)
                if record_digest(rec["key"], stamp, rec["value"]) != part.digests[i]:
                    self.missing[tp][i] = 1  # altered
        for tp, part in self.kafka.items():
            flags, missing = seen[tp], self.missing[tp]
            for i, digest in enumerate(part.digests):
                if digest and flags[i] == 0:
                    missing[i] = 1
        return StoreCount(len(md5), records, sum(_overlap(r) for r in ranges.values()), md5)

    def lost(self) -> int:
        """Records lost or altered in at least one store, plus records found where none was
        expected (bad ones, or offsets Kafka does not hold)."""
        return sum(m.count(1) for m in self.missing.values()) + len(self.unexpected)


def _overlap(ranges: list[tuple[int, int]]) -> int:
    """How many offsets lie in more than one of the inclusive ranges."""
    doubled, hi, dhi = 0, -1, -1  # covered up to hi; counted as doubled up to dhi
    for first, last in sorted(ranges):
        if first <= hi:
            lo, top = max(first, dhi + 1), min(last, hi)
            if top >= lo:
                doubled += top - lo + 1
                dhi = top
        hi = max(hi, last)
    return doubled


def divergent(a: dict[str, str], b: dict[str, str]) -> int:
    """Keys in one store only, or with other bytes (by MD5)."""
    return len(set(a) ^ set(b)) + sum(1 for k in set(a) & set(b) if a[k] != b[k])
