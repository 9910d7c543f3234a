"""The store interface: what the pipeline needs from an object store, and nothing more.

Encoding and naming stay outside the stores: a store receives a key, the bytes and their MD5.
Every method raises `replicator.errors.StoreError` (with a kind) for failures it understands,
never a raw SDK exception, and never puts a secret in a message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class PutOutcome(str, Enum):
    CREATED = "created"
    ALREADY_PRESENT = "already_present"  # the key existed with the same MD5: success


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    md5_hex: str | None  # None when the store cannot tell (e.g. a multipart upload)


class Store(Protocol):
    @property
    def name(self) -> str:
        """Short, stable name used in group ids, metrics and logs: "s3" or "azure"."""
        ...

    def health_check(self) -> None:
        """Raise StoreError (AUTH, NOT_FOUND, UNAVAILABLE) unless the bucket/container is usable."""
        ...

    def create_if_absent(
        self, key: str, data: bytes, md5: bytes, metadata: Mapping[str, str]
    ) -> PutOutcome:
        """Create `key` with `data` unless it exists.

        - absent -> create with Content-MD5 = md5 (the store verifies it) -> CREATED;
        - present with the same MD5 -> ALREADY_PRESENT;
        - present with another MD5 -> raise ConflictError (never overwrite).
        """
        ...

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects under `prefix` in key order; only keys > start_after when given."""
        ...

    def read(self, key: str) -> bytes:
        """The object's bytes; StoreError(NOT_FOUND) when absent."""
        ...

    def delete(self, key: str) -> None:
        """Delete `key` (absent is not an error)."""
        ...

    def close(self) -> None: ...
