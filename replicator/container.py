"""Encode a chunk as an Avro object container file with deterministic bytes.

The same records always give the same bytes: the sync marker is derived from the object key,
the codec and its level are fixed by configuration, and the header holds no clock value.

Each record is an envelope around the event exactly as it came from Kafka:

    ReplicatedRecord { offset: long, timestamp: timestamp-millis, key: [null, bytes],
                       headers: array<Header { key: string, value: [null, bytes] }>,
                       value: [<writer schema A>, <writer schema B>, ...] }

That is format 3 (`replicator.format` in the header). Format 2, written before record
headers were kept, has no `headers` field; every reader here reads both (`read_container`
tells which, `stored_records` gives `headers=None` for a format-2 envelope). A record
without headers costs one byte (an empty array); headers keep their order, repeated names
and null values.

The Avro binary encoding of a record is the concatenation of its fields' encodings, and a
union value is its branch index followed by the branch's encoding, so the envelope is built
from the raw Avro body found on the wire (after the 5-byte Confluent header) without
decoding and re-encoding the event.

Why a union: producers move from one schema version to the next gradually (a rolling
deploy interleaves v1 and v2 records for minutes). One chunk per schema run would then cut
objects of a few records each. Instead the value is a union of the writer schemas present in
the chunk, ordered by schema id, so a chunk follows only the count, bytes and time rules.
Each branch's named types get a namespace suffix `s<schema id>` (Avro forbids two
definitions of one name in a schema); names never reach the binary encoding, so the bodies
are untouched. The header lists the ids in `replicator.schema_ids`.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

import fastavro

from replicator.chunking import Chunk
from replicator.model import TP, RawRecord, RecordHeaders
from replicator.schemas import SchemaRegistry

_native_envelopes: Callable[[Sequence[RawRecord], Sequence[int], bool], list[bytes]] | None
try:  # the compiled extension (setup.py); the Python code below makes the same bytes
    from replicator.judge._fastcheck import envelopes as _native_envelopes
except ImportError:  # pragma: no cover - a build without the extension
    _native_envelopes = None

MAGIC = b"Obj\x01"
BLOCK_TARGET_BYTES = 1024 * 1024  # raw bytes per container block (deterministic: by content)
FORMAT_VERSION = "3"  # the format this version writes: envelopes with the record headers
LEGACY_FORMAT = "2"  # the format before headers were kept: still read everywhere
READABLE_FORMATS = frozenset({LEGACY_FORMAT, FORMAT_VERSION})


_LOW7 = 0x7F


def zigzag_varint(value: int) -> bytes:
    """Avro `long` encoding. Offsets (up to 4 bytes) and millisecond timestamps (6 bytes)
    take an unrolled branch: this runs twice per record."""
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return bytes((n,))
    if n < 1 << 28:
        if n < 1 << 14:
            return bytes((n & _LOW7 | 0x80, n >> 7))
        if n < 1 << 21:
            return bytes((n & _LOW7 | 0x80, n >> 7 & _LOW7 | 0x80, n >> 14))
        return bytes((n & _LOW7 | 0x80, n >> 7 & _LOW7 | 0x80, n >> 14 & _LOW7 | 0x80, n >> 21))
    if 1 << 35 <= n < 1 << 42:
        return bytes(
            (
                n & _LOW7 | 0x80,
                n >> 7 & _LOW7 | 0x80,
                n >> 14 & _LOW7 | 0x80,
                n >> 21 & _LOW7 | 0x80,
                n >> 28 & _LOW7 | 0x80,
                n >> 35,
            )
        )
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_bytes(data: bytes) -> bytes:
    return zigzag_varint(len(data)) + data


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _fullname(name: str, namespace: str | None) -> tuple[str, str | None, str]:
    """(fullname, namespace, simple name) of a named type's `name` in `namespace`."""
    if "." in name:
        ns, simple = name.rsplit(".", 1)
        return name, ns, simple
    return (f"{namespace}.{name}" if namespace else name), namespace, name


def namespaced(schema: object, suffix: str) -> object:
    """A copy of a parsed-JSON schema whose named types all live in `<namespace>.<suffix>`.
    References to them are rewritten; aliases are dropped (they name the old types)."""
    renamed: dict[str, str] = {}

    def walk(node: object, namespace: str | None) -> object:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full, _ns, _simple = _fullname(node, namespace)
            return renamed.get(full, renamed.get(node, node))
        if isinstance(node, list):
            return [walk(item, namespace) for item in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if kind in _NAMED:
            full, ns, simple = _fullname(str(node["name"]), node.get("namespace", namespace))
            new_ns = f"{ns}.{suffix}" if ns else suffix
            renamed[full] = f"{new_ns}.{simple}"
            out = {k: v for k, v in node.items() if k != "aliases"}
            out["name"] = simple
            out["namespace"] = new_ns
            if kind in ("record", "error"):
                out["fields"] = [
                    {**{k: v for k, v in f.items() if k != "aliases"}, "type": walk(f["type"], ns)}
                    for f in node["fields"]
                ]
            return out
        out = dict(node)
        for key in ("items", "values"):
            if key in out:
                out[key] = walk(out[key], namespace)
        if isinstance(kind, (dict, list)) or (
            isinstance(kind, str) and kind not in _PRIMITIVES and kind not in ("array", "map")
        ):
            out["type"] = walk(kind, namespace)
        return out

    return walk(schema, None)


HEADERS_FIELD: dict[str, object] = {
    "name": "headers",
    "type": {
        "type": "array",
        "items": {
            "type": "record",
            "name": "Header",
            "fields": [
                {"name": "key", "type": "string"},
                {"name": "value", "type": ["null", "bytes"]},
            ],
        },
    },
}


def envelope_schema(value_schemas: Mapping[int, str], format_version: str = FORMAT_VERSION) -> str:
    """The container's schema (JSON text) for events of these writer schemas (id -> JSON);
    an empty mapping (a chunk of dead-lettered offsets only) gives a null value. Format 2
    has no headers field."""
    value: object = (
        [namespaced(json.loads(value_schemas[i]), f"s{i}") for i in sorted(value_schemas)]
        if value_schemas
        else "null"
    )
    schema = {
        "type": "record",
        "name": "ReplicatedRecord",
        "namespace": "fr.hdh.replicator",
        "fields": [
            {"name": "offset", "type": "long"},
            {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "key", "type": ["null", "bytes"]},
            *([HEADERS_FIELD] if format_version != LEGACY_FORMAT else []),
            {"name": "value", "type": value},
        ],
    }
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)


def sync_marker(key: str) -> bytes:
    """16 bytes derived from the object key: the same key always gets the same marker."""
    return hashlib.md5(key.encode()).digest()


def encode_headers(headers: RecordHeaders | None) -> bytes:
    """The Avro encoding of the envelope's headers field: an array of {key: string, value:
    [null, bytes]}, in order, as one block (b"\x00" alone when there are none). TypeError
    for a name that is not a str or a value that is neither bytes nor None (what the C
    encoder refuses too)."""
    if not headers:
        return b"\x00"
    out = bytearray(zigzag_varint(len(headers)))
    for pair in headers:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError("each header must be a (name, value) tuple")
        name, value = pair
        if not isinstance(name, str):
            raise TypeError("header names must be str")
        out += _avro_bytes(name.encode())
        if value is None:
            out += b"\x00"
        elif isinstance(value, bytes):
            out += b"\x02" + _avro_bytes(value)
        else:
            raise TypeError("header values must be bytes or None")
    out += b"\x00"
    return bytes(out)


def encode_envelope(
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    body: bytes,
    branch: int,
    headers: RecordHeaders | None = None,
    format_version: str = FORMAT_VERSION,
) -> bytes:
    """The Avro binary encoding of one envelope record (see the module docstring); format 2
    leaves the headers out."""
    return (
        zigzag_varint(offset)
        + zigzag_varint(timestamp_ms)
        + (b"\x00" if key is None else b"\x02" + _avro_bytes(key))
        + (b"" if format_version == LEGACY_FORMAT else encode_headers(headers))
        + zigzag_varint(branch)
        + body
    )


def encode_record(record: RawRecord, branch: int, format_version: str = FORMAT_VERSION) -> bytes:
    return encode_envelope(
        record.offset,
        record.timestamp_ms,
        record.key,
        record.body,
        branch,
        record.headers,
        format_version,
    )


def encode_container(
    key: str,
    value_schemas: Mapping[int, str],
    records: Sequence[RawRecord],
    schema_ids: Sequence[int],
    metadata: Mapping[str, str],
    codec: str = "deflate",
    level: int = 6,
    format_version: str = FORMAT_VERSION,
) -> bytes:
    """The complete container file. `schema_ids[i]` is the writer schema id of `records[i]`;
    `value_schemas` maps every id used to its JSON. `metadata` values end up in the header,
    sorted by name. `format_version` "2" writes the format before headers were kept (the
    records' headers are then left out): for tests and tools that must make such objects."""
    if codec not in ("null", "deflate"):
        raise ValueError(f"unsupported codec {codec!r}")
    if format_version not in READABLE_FORMATS:
        raise ValueError(f"unsupported format {format_version!r}")
    if len(records) != len(schema_ids):
        raise ValueError("one schema id per record")
    branches = {sid: i for i, sid in enumerate(sorted(value_schemas))}
    sync = sync_marker(key)
    header_meta = {
        "avro.schema": envelope_schema(value_schemas, format_version).encode(),
        "avro.codec": codec.encode(),
        "replicator.format": format_version.encode(),
        "replicator.schema_ids": ",".join(str(i) for i in sorted(value_schemas)).encode(),
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

    encoded = _encoded_records(records, schema_ids, branches, format_version)
    # Blocks close when their raw bytes reach the target: the first record that brings a
    # block to BLOCK_TARGET_BYTES or more is its last. The cumulative sizes find those
    # records without a per-record Python step.
    ends = list(accumulate(map(len, encoded)))
    first, base = 0, 0
    while first < len(encoded):
        last = bisect_left(ends, base + BLOCK_TARGET_BYTES, lo=first)
        last = min(last, len(encoded) - 1)
        data = b"".join(encoded[first : last + 1])
        if codec == "deflate":
            compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
            data = compressor.compress(data) + compressor.flush()
        out += zigzag_varint(last + 1 - first)
        out += zigzag_varint(len(data))
        out += data
        out += sync
        first, base = last + 1, ends[last]
    return bytes(out)


def _encoded_records(
    records: Sequence[RawRecord],
    schema_ids: Sequence[int],
    branches: Mapping[int, int],
    format_version: str = FORMAT_VERSION,
) -> list[bytes]:
    """Each record's envelope bytes (`encode_record`), made in C when the extension is built."""
    if _native_envelopes is not None and len(branches) <= 64:
        try:
            per_record = [branches[sid] for sid in schema_ids]
        except KeyError as exc:
            raise ValueError(f"no schema given for schema id {exc.args[0]}") from None
        if len(per_record) != len(records):
            raise ValueError("one schema id per record")
        return _native_envelopes(records, per_record, format_version != LEGACY_FORMAT)
    out: list[bytes] = []
    append = out.append
    for record, sid in zip(records, schema_ids, strict=True):
        try:
            branch = branches[sid]
        except KeyError:
            raise ValueError(f"no schema given for schema id {sid}") from None
        append(encode_record(record, branch, format_version))
    return out


# Header entries the container writes itself: not part of the object metadata the service sets.
_CONTAINER_ONLY = frozenset({"format", "schema_ids", "schema_id"})


def object_metadata(data: bytes) -> dict[str, str]:
    """The object metadata the service sets (topic, partition, first_offset, last_offset,
    records, skipped), read back from a container's header; {} when it cannot be read."""
    try:
        header = fastavro.reader(io.BytesIO(data)).metadata
    except Exception:  # fastavro raises many types on a corrupt header
        return {}
    out = {}
    for name, value in header.items():
        short = name.removeprefix("replicator.")
        if short != name and short not in _CONTAINER_ONLY:
            out[short] = value.decode() if isinstance(value, bytes) else str(value)
    return out


@dataclass(frozen=True)
class EncodedChunk:
    topic: str
    partition: int
    first: int
    last: int
    key: str
    data: bytes
    md5: bytes
    records: int
    metadata: dict[str, str]

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)


def encode_chunk(chunk: Chunk, registry: SchemaRegistry, codec: str, level: int) -> EncodedChunk:
    """Encode once; the same buffer goes to every store."""
    key = str(chunk.key)
    schemas = {sid: registry.get(sid).schema_json for sid in set(chunk.schema_ids)}
    meta = {
        "topic": chunk.topic,
        "partition": str(chunk.partition),
        "first_offset": str(chunk.first),
        "last_offset": str(chunk.last),
        "records": str(len(chunk.records)),
        "skipped": str(chunk.skipped),
    }
    data = encode_container(
        key, schemas, chunk.records, chunk.schema_ids, meta, codec=codec, level=level
    )
    return EncodedChunk(
        topic=chunk.topic,
        partition=chunk.partition,
        first=chunk.first,
        last=chunk.last,
        key=key,
        data=data,
        md5=hashlib.md5(data).digest(),
        records=len(chunk.records),
        metadata=meta,
    )


# ---------------------------------------------------------------------- reading
StoredHeaders = tuple[tuple[str, bytes | None], ...]


class StoredRecord(NamedTuple):
    """One envelope of a container file as stored: its offset, timestamp, key, the writer
    schema id of its value, the value's raw Avro body (the bytes that followed the 5-byte
    Confluent header on the wire) and the record's headers in order (None: a format-2
    envelope, which did not keep them; () for a format-3 record without headers)."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    schema_id: int
    body: bytes
    headers: StoredHeaders | None = None


@dataclass(frozen=True)
class ContainerContents:
    """A container file opened by fastavro: its header metadata, the writer schema ids of
    the value union (branch i is `schema_ids[i]`), the envelope schema, and every block's
    records concatenated, decompressed (`payload`: the envelopes' binary encodings, exactly
    what `_encoded_records` produced when it was written)."""

    metadata: dict[str, str]
    schema_ids: tuple[int, ...]
    payload: bytes
    count: int
    writer_schema: str | list[Any] | dict[str, Any]

    @property
    def format(self) -> str:
        """`replicator.format` of the header ("2": no headers in the envelopes, "3": with)."""
        return self.metadata.get("replicator.format", "")

    @property
    def has_headers(self) -> bool:
        """Whether the envelopes hold the record headers (format 3 and later)."""
        return self.format != LEGACY_FORMAT


def normalized_headers(headers: object) -> StoredHeaders:
    """Record headers as comparable pairs (name, value) in order, whatever gives them:
    confluent-kafka (a list of tuples, None for no headers), fastavro (a list of
    {"key", "value"} dicts) or a `StoredRecord`."""
    if not headers:
        return ()
    out: list[tuple[str, bytes | None]] = []
    for item in headers if isinstance(headers, (list, tuple)) else ():
        if isinstance(item, dict):
            name, value = item.get("key"), item.get("value")
        else:
            name, value = item
        if isinstance(value, str):
            value = value.encode()
        out.append((str(name), value))
    return tuple(out)


def read_container(data: bytes) -> ContainerContents:
    """Open a container file with fastavro's block reader (framing, codec, sync markers);
    ValueError when it is not one, or of a format this version does not know."""
    try:
        reader = fastavro.block_reader(io.BytesIO(data))
        meta = {
            k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in reader.metadata.items()
        }
        parts: list[bytes] = []
        count = 0
        for block in reader:
            parts.append(block.bytes_.getvalue())  # type: ignore[attr-defined]
            count += block.num_records
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise ValueError(f"not a readable Avro container file ({type(exc).__name__})") from None
    fmt = meta.get("replicator.format")
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"unknown replicator.format {fmt!r}")
    ids_text = meta.get("replicator.schema_ids", "")
    try:
        ids = tuple(int(i) for i in ids_text.split(",") if i)
    except ValueError:
        raise ValueError(f"bad replicator.schema_ids header {ids_text!r}") from None
    return ContainerContents(meta, ids, b"".join(parts), count, reader.writer_schema)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro `long` at `pos` (the inverse of `zigzag_varint`) and the position after it."""
    shift = n = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7


def _read_headers(data: bytes, pos: int) -> tuple[StoredHeaders, int]:
    """The headers array at `pos` (`encode_headers`'s inverse; any block layout Avro allows)
    and the position after it."""
    out: list[tuple[str, bytes | None]] = []
    while True:
        count, pos = _read_varint(data, pos)
        if count == 0:
            return tuple(out), pos
        if count < 0:  # a block with its size in bytes first
            count = -count
            _size, pos = _read_varint(data, pos)
        for _ in range(count):
            size, pos = _read_varint(data, pos)
            name = data[pos : pos + size].decode()
            pos += size
            has_value, pos = _read_varint(data, pos)
            value: bytes | None = None
            if has_value == 1:
                size, pos = _read_varint(data, pos)
                value = data[pos : pos + size]
                pos += size
            out.append((name, value))


def stored_records(contents: ContainerContents) -> list[StoredRecord]:
    """Every envelope of the container with its value's raw body. fastavro finds where each
    envelope ends (it walks the value with its writer schema); the envelope's leading
    fields are read back from those bytes, so the body is exactly what was stored.
    ValueError when an envelope cannot be read."""
    payload = contents.payload
    bio = io.BytesIO(payload)
    with_headers = contents.has_headers
    out: list[StoredRecord] = []
    try:
        for _ in range(contents.count):
            start = bio.tell()
            fastavro.schemaless_reader(bio, contents.writer_schema, None)
            end = bio.tell()
            offset, pos = _read_varint(payload, start)
            timestamp, pos = _read_varint(payload, pos)
            has_key, pos = _read_varint(payload, pos)
            key: bytes | None = None
            if has_key == 1:
                size, pos = _read_varint(payload, pos)
                key = payload[pos : pos + size]
                pos += size
            headers: StoredHeaders | None = None
            if with_headers:
                headers, pos = _read_headers(payload, pos)
            branch, pos = _read_varint(payload, pos)
            schema_id = contents.schema_ids[branch] if branch < len(contents.schema_ids) else -1
            out.append(StoredRecord(offset, timestamp, key, schema_id, payload[pos:end], headers))
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise ValueError(f"envelope {len(out)} cannot be read ({type(exc).__name__})") from None
    return out


def envelopes_payload(
    records: Sequence[RawRecord],
    schema_ids: Sequence[int],
    union_ids: Sequence[int],
    format_version: str = FORMAT_VERSION,
) -> bytes:
    """What a container of these records holds once its blocks are decompressed and joined
    (its `ContainerContents.payload`), when its value union is of `union_ids`."""
    branches = {sid: i for i, sid in enumerate(sorted(union_ids))}
    return b"".join(_encoded_records(records, schema_ids, branches, format_version))


def same_chunk(existing: bytes, new: bytes) -> bool:
    """Whether `existing` (an object found at a key) holds what `new` (the object this
    version made for the same key) holds, written in an earlier format: the same header
    metadata the service sets, the same records (offset, timestamp, key, schema id, value
    bytes), and, where both formats keep them, the same headers.

    This is how the switch from format 2 to 3 raises no conflict: an object the previous
    version wrote for a chunk is that chunk (the key and its cut are the same, the records
    are Kafka's), only without the record headers, which format 2 never kept. Objects of
    one format are compared by bytes (MD5) by the stores, never here: two different objects
    of the same format are a conflict."""
    try:
        old, mine = read_container(existing), read_container(new)
    except ValueError:
        return False
    if old.format == mine.format or old.format != LEGACY_FORMAT:
        return False
    if object_metadata(existing) != object_metadata(new):
        return False
    try:
        old_records, new_records = stored_records(old), stored_records(mine)
    except ValueError:
        return False
    if len(old_records) != len(new_records):
        return False
    return all(a[:5] == b[:5] for a, b in zip(old_records, new_records, strict=True))
