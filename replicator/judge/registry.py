"""Writer schemas first seen at run time: from a schema registry server, or a reloaded file.

Two modes (docs/configuration.md):

- **registry server** (``REPLICATOR_SCHEMA_REGISTRY_URL``): an id the judge does not know is
  looked up with confluent-kafka's ``SchemaRegistryClient`` (``GET /schemas/ids/{id}`` and
  ``GET /schemas/ids/{id}/versions``), in the main process only; the worker processes get
  the schemas it found with the next batches (``SchemaRegistry.added``);
- **file** (``schemas/registry.json``, the offline mode): ids come from the file only; a
  SIGHUP or a new modification time of the file reloads it (``reload_file``), adding its
  new ids; a file that does not load is refused and the schemas known so far are kept.

What a lookup can end in (``classify``): the schema (it is added to the judge's registry
when it belongs to a replicated topic under the subject name strategy, and its compiled
checks are built on first use); a definite "not found" (HTTP 404 with error code 40403:
the record is dead-lettered as ``unknown_schema_id``); or anything else (unreachable,
timeout, 5xx, 429, an unexpected answer): ``RegistryUnavailable``, which holds the record's
partition (nothing is committed past it) and is retried with backoff. A registry outage
never sends a good record to the dead-letter topic.

Lookups by id are cached for the process's life in a bounded LRU (ids are immutable); a
"not found" only for ``NOT_FOUND_TTL_S`` (a schema registered later must be found then,
for instance before a re-drive of its dead letters).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from replicator.config import Settings
from replicator.errors import ConfigError
from replicator.logs import fields
from replicator.schemas import (
    RegisteredSchema,
    SchemaRegistry,
    SchemaRegistryError,
    SubjectStrategy,
    schema_from_json,
    topics_of,
)

log = logging.getLogger("replicator")

NOT_FOUND_TTL_S: Final = 10.0
SCHEMA_NOT_FOUND: Final = 40403  # the registry's error code for "Schema not found"
REGISTRY_UNAVAILABLE: Final = "registry_unavailable"  # a verdict's reason: hold, not a dead letter

Outcome = Literal["found", "not_found", "hold"]


class RegistryUnavailable(Exception):
    """The registry gave no definite answer: hold the record's partition, retry later."""


def classify(exc: BaseException) -> Outcome:
    """What a failed lookup means: "not_found" only for the registry's definite answer
    (HTTP 404 with error code 40403); "hold" for everything else (a network error, a
    timeout, 5xx, 429, 401/403, another 404 such as a proxy's, a malformed answer)."""
    # confluent-kafka's SchemaRegistryError, read by its attributes (its module is imported
    # only in registry server mode: see make_client)
    status = getattr(exc, "http_status_code", None)
    if status == 404 and getattr(exc, "error_code", None) == SCHEMA_NOT_FOUND:
        return "not_found"
    return "hold"


def describe(exc: BaseException) -> str:
    """A failed lookup in a few words, without URL or credentials (an httpx error's text
    may carry the URL; only its type is said)."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int):
        return f"HTTP {status} (error code {getattr(exc, 'error_code', None)})"
    return type(exc).__name__


class MalformedAnswer(TypeError):
    """A registry answer without a field it must have (a 200 whose body is not the
    documented one): not a definite answer, so the record's partition is held."""


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedAnswer("a text field is missing")
    return value


def _number(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedAnswer("a number field is missing")
    return value


class Lookups(Protocol):
    """The two calls made to a registry server (``SchemaRegistryClient`` has them)."""

    def get_schema(self, schema_id: int) -> Any: ...

    def get_schema_versions(self, schema_id: int) -> Any: ...


def client_conf(settings: Settings) -> dict[str, Any]:
    """``SchemaRegistryClient``'s configuration from the settings. The client's own retries
    are off (one attempt per lookup): the service holds the partition and retries itself,
    with backoff, without holding its loop."""
    conf: dict[str, Any] = {
        "url": ",".join(settings.schema_registry_url),
        "timeout": settings.schema_registry_timeout_s,
        "max.retries": 0,
        "cache.capacity": settings.schema_registry_cache_size,
    }
    if settings.schema_registry_basic_auth is not None:
        conf["basic.auth.user.info"] = settings.schema_registry_basic_auth.get_secret_value()
    if settings.schema_registry_bearer_token is not None:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = settings.schema_registry_bearer_token.get_secret_value()
        conf["bearer.auth.logical.cluster"] = settings.schema_registry_logical_cluster
    if settings.schema_registry_ca_location is not None:
        conf["ssl.ca.location"] = str(settings.schema_registry_ca_location)
    if settings.schema_registry_certificate_location is not None:
        conf["ssl.certificate.location"] = str(settings.schema_registry_certificate_location)
    if settings.schema_registry_key_location is not None:
        conf["ssl.key.location"] = str(settings.schema_registry_key_location)
    return conf


def make_client(settings: Settings) -> Lookups | None:
    """The registry server's client, or None in file mode."""
    if not settings.schema_registry_url:
        return None
    # Imported here, in registry server mode only: the client and its HTTP and OAuth
    # libraries cost about 0.2 s of CPU to import, which file mode has no use for.
    from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415

    try:
        return SchemaRegistryClient(client_conf(settings))
    except (ValueError, TypeError, OSError) as exc:  # a bad certificate, key or URL
        raise ConfigError(
            f"REPLICATOR_SCHEMA_REGISTRY_*: the registry client refuses its settings: "
            f"{type(exc).__name__}"
        ) from None


def probe(settings: Settings) -> str:
    """What `replicator check` says of the writer schemas' source: the file's schema count,
    or the registry server's subject count (one request, `GET /subjects`). Raises
    ``ConfigError`` for a file that does not load, ``RegistryUnavailable`` for a server
    that gives no answer (described without URL or credentials)."""
    client = make_client(settings)
    if client is None:
        registry = initial_registry(settings)
        return f"file {settings.schemas_dir / 'registry.json'}: {len(registry)} schema(s)"
    try:
        subjects = getattr(client, "get_subjects")()  # noqa: B009 - not in the Lookups protocol
    except Exception as exc:  # any failure: said in a few words
        raise RegistryUnavailable(
            f"the schema registry server does not answer: {describe(exc)}"
        ) from None
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    return f"{len(settings.schema_registry_url)} URL(s): {len(subjects)} subject(s)"


def initial_registry(settings: Settings) -> SchemaRegistry:
    """The judge's registry at start: the file's schemas in file mode, none with a server
    (they are looked up on first use)."""
    if settings.schema_registry_url:
        return SchemaRegistry({})
    return SchemaRegistry.load(
        settings.schemas_dir, settings.schema_subject_strategy, settings.record_names()
    )


@dataclass(frozen=True)
class Lookup:
    """A lookup's answer: the schema (``schema``, with the topics it belongs to; it may
    belong to none of ours), or a reason not to use it (``problem``: (reason, detail))."""

    schema: RegisteredSchema | None
    problem: tuple[str, str] | None = None


_BACKOFF: Final = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)


def backoff_s(failures: int, cap_s: float) -> float:
    """The wait before the next lookup after `failures` failed ones in a row (tenacity's
    exponential backoff with jitter: about 0.5, 1, 2, 4 ... s, at most `cap_s`)."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(failures, 1)
    return min(_BACKOFF(state), cap_s)


class SchemaResolver:
    """The judge's registry and how it grows: lookups by id (registry server mode), the
    registry file's reloads (file mode), and the outage state readiness shows."""

    def __init__(
        self,
        registry: SchemaRegistry,
        strategy: SubjectStrategy = "topic",
        record_names: Mapping[str, Iterable[str]] | None = None,
        client: Lookups | None = None,
        cache_size: int = 10_000,
        retry_max_s: float = 30.0,
        schemas_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, int], None] | None = None,
        topics: Iterable[str] | None = None,
    ) -> None:
        self.registry = registry
        # the (registry) topics replicated: a schema of none of them is never added to the
        # judge's registry (it stays in the bounded cache); None: every topic
        self.topics = None if topics is None else frozenset(topics)
        self.strategy = strategy
        self.record_names = {t: tuple(n) for t, n in (record_names or {}).items()}
        self.client = client
        self.cache_size = cache_size
        self.retry_max_s = retry_max_s
        self.schemas_dir = schemas_dir
        self.clock = clock
        self.on_change = on_change  # (state "up"/"down", failures): metrics
        self._cache: OrderedDict[int, Lookup] = OrderedDict()
        self._not_found: dict[int, float] = {}  # id -> until when "not found" is trusted
        self.failures = 0  # failed lookups in a row
        self.outage: str | None = None  # why the registry is considered down, or None
        self.retry_at = 0.0  # no lookup before this (monotonic)
        self._file_mtime = self._mtime()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        registry: SchemaRegistry,
        client: Lookups | None = None,
        on_change: Callable[[str, int], None] | None = None,
    ) -> SchemaResolver:
        return cls(
            registry,
            strategy=settings.schema_subject_strategy,
            record_names=settings.record_names(),
            client=client if client is not None else make_client(settings),
            cache_size=settings.schema_registry_cache_size,
            retry_max_s=settings.schema_registry_retry_max_s,
            schemas_dir=None if settings.schema_registry_url else settings.schemas_dir,
            on_change=on_change,
            topics={settings.schema_topic(t) for t in settings.topics},
        )

    # ------------------------------------------------------------------ lookups by id
    def lookup(self, schema_id: int) -> Lookup:
        """The schema with this id (``Lookup.schema`` None: definitely not registered).
        Raises ``RegistryUnavailable`` while the registry gives no definite answer."""
        known = self.registry.find(schema_id)
        if known is not None:
            return Lookup(known)
        cached = self._cache.get(schema_id)
        if cached is not None:
            self._cache.move_to_end(schema_id)
            return cached
        now = self.clock()
        until = self._not_found.get(schema_id)
        if until is not None and now < until:
            return Lookup(None)
        if self.client is None:
            return Lookup(None)  # file mode: the file is the whole truth
        if self.outage is not None and now < self.retry_at:
            raise RegistryUnavailable(self.outage)
        try:
            found = self.client.get_schema(schema_id)
            versions = self.client.get_schema_versions(schema_id)
            # a malformed answer (no schema, versions without subject or number) raises
            # here too, and holds like any answer that is not a definite one
            result = self._lookup_of(schema_id, found, versions)
        except Exception as exc:  # any failure: classify says hold or not found
            if classify(exc) == "not_found":
                self._answered()
                self._not_found[schema_id] = now + NOT_FOUND_TTL_S
                if len(self._not_found) > self.cache_size:
                    self._not_found = {i: t for i, t in self._not_found.items() if t > now}
                return Lookup(None)
            self._failed(describe(exc), now)
            raise RegistryUnavailable(self.outage or "") from None
        self._answered()
        self._cache[schema_id] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if result.schema is not None and result.schema.topics:
            self.registry.add(result.schema)
            log.info(
                "schema_added",
                extra=fields(
                    schema_id=schema_id,
                    subject=result.schema.subject,
                    topics=sorted(result.schema.topics),
                ),
            )
        return result

    def _lookup_of(self, schema_id: int, found: Any, versions: Any) -> Lookup:
        kind = getattr(found, "schema_type", None) or "AVRO"
        if kind != "AVRO":
            return Lookup(None, ("undecodable", f"schema id {schema_id} is a {kind} schema"))
        if getattr(found, "references", None):
            return Lookup(
                None,
                ("undecodable", f"schema id {schema_id} has references (not supported)"),
            )
        pairs = [(_text(v.subject), _number(v.version)) for v in versions or ()]
        schema_str = _text(getattr(found, "schema_str", None))
        try:
            named = schema_from_json(schema_id, "", 1, (), schema_str)
        except ValueError as exc:
            return Lookup(None, ("undecodable", f"schema id {schema_id}: {exc}"))
        subjects = [s for s, _v in pairs]
        topics = topics_of(self.strategy, subjects, named.name, self.record_names)
        if self.topics is not None:
            topics &= self.topics
        subject, version = next(
            (
                (s, v)
                for s, v in pairs
                if topics_of(self.strategy, [s], named.name, self.record_names)
            ),
            pairs[0] if pairs else ("", 1),
        )
        return Lookup(schema_from_json(schema_id, subject, version, topics, schema_str))

    def _answered(self) -> None:
        if self.outage is not None:
            log.warning("schema_registry_back", extra=fields(after_failures=self.failures))
        if self.outage is not None or self.failures:
            self.failures, self.outage, self.retry_at = 0, None, 0.0
            if self.on_change is not None:
                self.on_change("up", 0)

    def _failed(self, what: str, now: float) -> None:
        self.failures += 1
        wait = backoff_s(self.failures, self.retry_max_s)
        self.retry_at = now + wait
        self.outage = f"the schema registry does not answer: {what}"
        log.warning(
            "schema_registry_unavailable",
            extra=fields(error=what, failures=self.failures, retry_in_s=round(wait, 2)),
        )
        if self.on_change is not None:
            self.on_change("down", self.failures)

    def wrong_topic_detail(self, schema_id: int, topic: str, lookup: Lookup) -> str:
        schema = lookup.schema
        subject = schema.subject if schema is not None and schema.subject else "another subject"
        return (
            f"schema id {schema_id} belongs to subject {subject}, not to topic {topic} "
            f"(subject name strategy {self.strategy})"
        )

    # ------------------------------------------------------------------ the file's reloads
    def _mtime(self) -> float | None:
        if self.schemas_dir is None:
            return None
        try:
            return (self.schemas_dir / "registry.json").stat().st_mtime
        except OSError:
            return None

    def file_changed(self) -> bool:
        """True when registry.json has another modification time than at the last load
        (a mounted ConfigMap is replaced by a new file)."""
        return self.schemas_dir is not None and self._mtime() != self._file_mtime

    def reload_file(self) -> int:
        """Load registry.json again and add its new ids; the number added. A file that does
        not load, or that changes a known id, is refused (a log line) and nothing changes."""
        if self.schemas_dir is None:
            return 0
        self._file_mtime = self._mtime()
        try:
            fresh = SchemaRegistry.load(self.schemas_dir, self.strategy, self.record_names)
            changed = [
                i
                for i in fresh.ids()
                if (old := self.registry.find(i)) is not None
                and (
                    old.fingerprint != fresh.get(i).fingerprint or old.topics != fresh.get(i).topics
                )
            ]
            if changed:
                raise SchemaRegistryError(
                    f"schema id(s) {', '.join(map(str, changed))} changed (ids are immutable: "
                    "register a new version under a new id)"
                )
        except ConfigError as exc:
            log.error("schemas_reload_refused", extra=fields(error=str(exc)))
            return 0
        added = [fresh.get(i) for i in fresh.ids() if self.registry.add(fresh.get(i))]
        log.info(
            "schemas_reloaded",
            extra=fields(added=[s.id for s in added], known=len(self.registry)),
        )
        return len(added)
