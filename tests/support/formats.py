"""Objects as an earlier version wrote them: format 2, the envelope without record headers.

The project's own encoder still writes format 2 on request (`format_version`), byte for
byte as the previous version did (tests/unit/test_container.py pins those bytes), so an
object rewritten here is what a store holds after the previous version ran."""

from __future__ import annotations

from replicator.container import (
    LEGACY_FORMAT,
    encode_container,
    object_metadata,
    read_container,
    stored_records,
)
from replicator.model import RawRecord
from replicator.schemas import SchemaRegistry


def as_format_2(key: str, data: bytes, registry: SchemaRegistry, level: int = 6) -> bytes:
    """The object `data` (at `key`) as the previous version wrote it for the same chunk:
    the same records, metadata and codec, format 2 (no headers)."""
    contents = read_container(data)
    records = stored_records(contents)
    raws = [RawRecord(r.offset, r.timestamp_ms, r.key, r.body) for r in records]
    sids = [r.schema_id for r in records]
    schemas = {sid: registry.get(sid).schema_json for sid in contents.schema_ids}
    return encode_container(
        key,
        schemas,
        raws,
        sids,
        object_metadata(data),
        codec=contents.metadata.get("avro.codec", "null"),
        level=level,
        format_version=LEGACY_FORMAT,
    )
