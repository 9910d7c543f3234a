"""Errors the replicator raises on purpose; each one carries a message fit for an operator.

None of these messages may contain a secret: build them from names, endpoints and codes only.
"""

from __future__ import annotations

from enum import Enum


class ReplicatorError(Exception):
    """Base class: an expected failure with a clear, secret-free message."""


class ConfigError(ReplicatorError):
    """A bad setting. The CLI prints the message and exits 2, without a traceback."""


class StoreErrorKind(str, Enum):
    UNAVAILABLE = "unavailable"  # connection refused, timeout, 5xx: retry later
    AUTH = "auth"  # bad credentials or missing permission: an operator must act
    NOT_FOUND = "not_found"  # unknown bucket / container
    BAD_DIGEST = "bad_digest"  # the store received other bytes than we sent (MD5 mismatch)
    CONFLICT = "conflict"  # the key exists with different bytes: never overwrite
    OTHER = "other"


class StoreError(ReplicatorError):
    def __init__(self, store: str, kind: StoreErrorKind, message: str) -> None:
        super().__init__(f"{store}: {kind.value}: {message}")
        self.store = store
        self.kind = kind

    @property
    def retriable(self) -> bool:
        return self.kind in (StoreErrorKind.UNAVAILABLE, StoreErrorKind.BAD_DIGEST)


class ConflictError(StoreError):
    """The key already exists in the store with different bytes."""

    def __init__(self, store: str, key: str, existing_md5: str | None, new_md5: str) -> None:
        super().__init__(
            store,
            StoreErrorKind.CONFLICT,
            f"object {key} exists with md5 {existing_md5}, refusing to replace it with md5 {new_md5}",
        )
        self.key = key
        self.existing_md5 = existing_md5
        self.new_md5 = new_md5
