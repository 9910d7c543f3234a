"""Which stores a cutover retired: the record `replicator cutover` writes into every store.

The service reads it once at start (a retired store is neither written nor watched) and
verify reports it; `ops/cutover.py` writes and rolls it back. It lives with the stores, below
both, so the service does not depend on the operator tool that writes the record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from replicator.errors import StoreError, StoreErrorKind
from replicator.stores.base import Store

log = logging.getLogger("replicator.cutover")

RECORD_KEY = "_cutover/record.json"


def retired_stores(stores: Sequence[Store]) -> set[str]:
    """The stores a cutover record retires, read from whichever store answers (a store that
    cannot be read is skipped; a record found in any store counts)."""
    retired: set[str] = set()
    for store in stores:
        try:
            data = store.read(RECORD_KEY)
        except StoreError as exc:
            if exc.kind is not StoreErrorKind.NOT_FOUND:
                log.warning(
                    "cutover_record_unreadable",
                    extra={"replicator_fields": {"store": store.name, "error": str(exc)}},
                )
            continue
        try:
            record = json.loads(data)
            name = record["retired"]
        except (ValueError, KeyError, TypeError):
            log.error(
                "cutover_record_malformed",
                extra={"replicator_fields": {"store": store.name, "key": RECORD_KEY}},
            )
            continue
        if isinstance(name, str):
            retired.add(name)
    return retired
