"""Encode a chunk as an Avro object container file with deterministic bytes.

The same records always give the same bytes: the sync marker is derived from the object key,
the codec and its level are fixed by configuration, and the header holds no clock value.

Each record is an envelope around the event exactly as it came from Kafka:

    ReplicatedRecord { offset: long, timestamp: timestamp-millis, key: [null, bytes], value: <writer schema> }

The Avro binary encoding of a record is the concatenation of its fields' encodings, so the
envelope is built from the raw Avro body found on the wire (after the 5-byte Confluent header)
without decoding and re-encoding the event: the writer schema of the chunk is the writer
schema of its records (a chunk never mixes schema ids).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAGIC = b"Obj\x01"
BLOCK_TARGET_BYTES = 1024 * 1024  # raw bytes per container block (deterministic: by content)
FORMAT_VERSION = "1"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A good record of a chunk: its Kafka coordinates and its raw Avro body."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    body: bytes


def zigzag_varint(value: int) -> bytes:
    """Avro `long` encoding."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_bytes(data: bytes) -> bytes:
    return zigzag_varint(len(data)) + data


def envelope_schema(value_schema_json: str | None) -> str:
    """The container's schema (JSON text) for events of `value_schema_json` (None: no event)."""
    value: object = json.loads(value_schema_json) if value_schema_json is not None else "null"
    schema = {
        "type": "record",
        "name": "ReplicatedRecord",
        "namespace": "fr.hdh.replicator",
        "fields": [
            {"name": "offset", "type": "long"},
            {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "key", "type": ["null", "bytes"]},
            {"name": "value", "type": value},
        ],
    }
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)


def sync_marker(key: str) -> bytes:
    """16 bytes derived from the object key: the same key always gets the same marker."""
    return hashlib.md5(key.encode()).digest()


def encode_record(record: RawRecord) -> bytes:
    key = b"\x00" if record.key is None else b"\x02" + _avro_bytes(record.key)
    return zigzag_varint(record.offset) + zigzag_varint(record.timestamp_ms) + key + record.body


def encode_container(
    key: str,
    value_schema_json: str | None,
    records: Sequence[RawRecord],
    metadata: Mapping[str, str],
    codec: str = "deflate",
    level: int = 6,
) -> bytes:
    """The complete container file. `metadata` values end up in the header, sorted by name."""
    if codec not in ("null", "deflate"):
        raise ValueError(f"unsupported codec {codec!r}")
    if value_schema_json is None and records:
        raise ValueError("records need a value schema")
    sync = sync_marker(key)
    header_meta = {
        "avro.schema": envelope_schema(value_schema_json).encode(),
        "avro.codec": codec.encode(),
        "replicator.format": FORMAT_VERSION.encode(),
    }
    for name, value in metadata.items():
        header_meta[f"replicator.{name}"] = value.encode()
    out = bytearray(MAGIC)
    out += zigzag_varint(len(header_meta))
    for name in sorted(header_meta):
        out += _avro_bytes(name.encode())
        out += _avro_bytes(header_meta[name])
    out += b"\x00"
    out += sync

    block = bytearray()
    count = 0

    def close_block() -> None:
        nonlocal block, count
        data = bytes(block)
        if codec == "deflate":
            compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
            data = compressor.compress(data) + compressor.flush()
        out.extend(zigzag_varint(count))
        out.extend(zigzag_varint(len(data)))
        out.extend(data)
        out.extend(sync)
        block = bytearray()
        count = 0

    for record in records:
        block += encode_record(record)
        count += 1
        if len(block) >= BLOCK_TARGET_BYTES:
            close_block()
    if count:
        close_block()
    return bytes(out)
