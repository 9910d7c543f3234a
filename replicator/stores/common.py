"""What the store modules share: key prefixes, the SDK loggers kept quiet, and the ladder
that turns an error response into a `StoreErrorKind` and a readable message.

Each store keeps its own error codes (`ErrorCodes`) and the messages only it can word
(access denied, not found, unreachable); the order of the ladder and the other messages
are the same for every store, so they are written once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from replicator.errors import StoreErrorKind

DEFAULT_CONTENT_TYPE = "application/avro"


def quiet_loggers(names: Iterable[str], level: int = logging.WARNING) -> None:
    """Raise these loggers to `level`: below WARNING the SDKs log request URLs and headers
    (with a SAS connection string, the SAS token is part of every URL)."""
    for name in names:
        logging.getLogger(name).setLevel(level)


def normalize_prefix(prefix: str) -> str:
    """ "", or the prefix without leading or trailing slashes and with one trailing slash."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


def full_key(prefix: str, key: str) -> str:
    """The object's name in the store: the store's prefix, then the key (non-empty, relative)."""
    if not key or key.startswith("/"):
        raise ValueError(f"invalid object key {key!r}: must be non-empty and relative")
    return prefix + key


@dataclass(frozen=True)
class ErrorCodes:
    """A store's error codes, by the kind each means."""

    digest: frozenset[str]
    auth: frozenset[str]
    not_found: frozenset[str]
    unavailable: frozenset[str]


def response_kind(codes: ErrorCodes, code: str | None, status: int | None) -> StoreErrorKind:
    """The kind of an error response, from its error code and HTTP status: a wrong digest,
    then access, then absence, then a transient failure (timeouts, throttling, 5xx)."""
    if code in codes.digest:
        return StoreErrorKind.BAD_DIGEST
    if code in codes.auth or status in (401, 403):
        return StoreErrorKind.AUTH
    if code in codes.not_found or status == 404:
        return StoreErrorKind.NOT_FOUND
    if code in codes.unavailable or status in (408, 429) or (status is not None and status >= 500):
        return StoreErrorKind.UNAVAILABLE
    return StoreErrorKind.OTHER


def error_detail(code: str | None, status: int | None, fallback: str) -> str:
    """The bracketed detail of an error message: "<code> (HTTP <status>)", or what is known."""
    if status is None:
        return code or fallback
    if code is None or code == str(status):
        return f"HTTP {status}"
    return f"{code} (HTTP {status})"


def common_message(
    operation: str, kind: StoreErrorKind, tls: bool, endpoint: str, where: str, detail: str
) -> str:
    """The message of an error no store words for itself: a wrong digest, a TLS failure,
    anything else."""
    if kind is StoreErrorKind.BAD_DIGEST:
        return f"{operation}: the store received other bytes than the MD5 sent [{detail}]"
    if tls:
        return f"{operation}: TLS failure with {endpoint}: check the CA bundle [{detail}]"
    return f"{operation}: failed on {where} [{detail}]"
