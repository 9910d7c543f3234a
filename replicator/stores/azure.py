"""The Azure Blob store (Azure Blob Storage in production, Azurite locally).

Every key handed to a method is relative: the store reads and writes only under
`<prefix>/` in its container, and `list` gives the keys back without that prefix.

Authentication comes from a connection string, with an account key
(`AccountName=...;AccountKey=...`) or a SAS token (`BlobEndpoint=...;SharedAccessSignature=...`).

Integrity: an object up to `max_single_put_bytes` goes as ONE Put Blob request carrying the
caller's MD5 twice: as the transactional `Content-MD5` header (the service checks the body
against it and refuses a mismatch) and as `x-ms-blob-content-md5` (kept as the blob's MD5
property, which `list` and the "already present?" check read). A larger object goes in blocks
(each one checked by the SDK's own per-block MD5), after a local check of the MD5.

Errors: every SDK failure becomes a `StoreError` with a kind (see `azure_error_kind` and
`azure_exception_kind`). Messages are built from the container, the endpoint host, the
operation and the error code: never from the SDK's text (a transport error's text carries the
request URL, SAS token included), and the SDK exception is not chained (``from None``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, BlobType, ContentSettings, LinearRetry
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from replicator.errors import ConfigError, ConflictError, StoreError, StoreErrorKind
from replicator.stores.base import ObjectInfo, PutOutcome
from replicator.stores.common import (
    DEFAULT_CONTENT_TYPE,
    ErrorCodes,
    common_message,
    error_detail,
    full_key,
    normalize_prefix,
    quiet_loggers,
    response_kind,
)

if TYPE_CHECKING:
    from replicator.config import Settings

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_MAX_SINGLE_PUT_BYTES",
    "AzureBlobStore",
    "azure_error_kind",
    "azure_exception_kind",
    "is_tls_failure",
    "quiet_sdk_loggers",
]

DEFAULT_MAX_SINGLE_PUT_BYTES = 256 * 1024 * 1024

SDK_LOGGERS = ("azure", "urllib3")

# Azure metadata names must be valid C# identifiers (and are case-insensitive).
_METADATA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_CODES = ErrorCodes(
    digest=frozenset({"Md5Mismatch", "Crc64Mismatch", "InvalidMd5"}),
    auth=frozenset(
        {
            "AuthenticationFailed",
            "AuthorizationFailure",
            "AuthorizationPermissionMismatch",
            "AuthorizationProtocolMismatch",
            "AuthorizationResourceTypeMismatch",
            "AuthorizationServiceMismatch",
            "AuthorizationSourceIPMismatch",
            "InsufficientAccountPermissions",
            "InvalidAuthenticationInfo",
            "KeyBasedAuthenticationNotPermitted",
            "NoAuthenticationInformation",
        }
    ),
    not_found=frozenset({"ContainerNotFound", "BlobNotFound", "ResourceNotFound"}),
    unavailable=frozenset(
        {
            "ContainerBeingDeleted",
            "InternalError",
            "OperationTimedOut",
            "ServerBusy",
        }
    ),
)


def quiet_sdk_loggers(level: int = logging.WARNING) -> None:
    """Raise the Azure SDK's loggers (and urllib3's) to `level`.

    Below WARNING, azure-core and urllib3 log request URLs, and with a SAS connection string
    the SAS token is part of every URL.
    """
    quiet_loggers(SDK_LOGGERS, level)


def azure_error_kind(status: int | None, code: str | None, message: str = "") -> StoreErrorKind:
    """The kind of an Azure Storage error response, from its status, error code and message.

    `message` is only looked at for Azurite, which refuses a wrong MD5 with 400
    InvalidOperation "Provided contentMD5 doesn't match." (Azure answers 400 Md5Mismatch).
    """
    if code == "InvalidOperation" and status == 400 and "md5" in message.lower():
        return StoreErrorKind.BAD_DIGEST
    return response_kind(_CODES, code, status)


def azure_exception_kind(exc: Exception) -> StoreErrorKind:
    """The kind of any azure-core exception (an error response or a transport failure)."""
    if isinstance(exc, ClientAuthenticationError):  # includes a key that cannot sign
        return StoreErrorKind.AUTH
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)) and is_tls_failure(exc):
        # A certificate the CA bundle does not trust is a setting to fix, not an outage.
        return StoreErrorKind.OTHER
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, IncompleteReadError)):
        return StoreErrorKind.UNAVAILABLE
    if isinstance(exc, ResourceNotFoundError):
        return StoreErrorKind.NOT_FOUND
    if isinstance(exc, DecodeError):
        return StoreErrorKind.OTHER
    if isinstance(exc, HttpResponseError):
        return azure_error_kind(exc.status_code, _code(exc), _message(exc))
    return StoreErrorKind.OTHER


def is_tls_failure(exc: BaseException) -> bool:
    """Whether a transport error comes from a TLS handshake (e.g. an untrusted certificate)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 10 and all(current is not e for e in seen):
        if isinstance(current, (ssl.SSLError, requests.exceptions.SSLError)):
            return True
        seen.append(current)
        inner = getattr(current, "inner_exception", None)
        nxt = inner if isinstance(inner, BaseException) else None
        current = nxt or current.__cause__ or current.__context__
    return False


def _code(exc: AzureError) -> str | None:
    code = getattr(exc, "error_code", None)
    if code is None:
        return None
    # StorageErrorCode is a str enum whose str() is "StorageErrorCode.X": take the value.
    return str(getattr(code, "value", code))


def _message(exc: AzureError) -> str:
    return str(getattr(exc, "reason", "") or "") + " " + str(getattr(exc, "message", "") or "")


def _md5_hex(value: bytes | bytearray | None) -> str | None:
    return bytes(value).hex() if value else None


class AzureBlobStore:
    """A `Store` on an Azure Blob container, under a name prefix of its own."""

    def __init__(
        self,
        connection_string: str,
        container: str,
        prefix: str,
        ca_bundle: Path | str | None = None,
        timeout_s: float = 10.0,
        *,
        max_connections: int = 16,
        max_single_put_bytes: int = DEFAULT_MAX_SINGLE_PUT_BYTES,
        content_type: str = DEFAULT_CONTENT_TYPE,
        encryption_scope: str | None = None,
    ) -> None:
        quiet_sdk_loggers()
        self._encryption_scope = encryption_scope  # x-ms-encryption-scope on every put
        self._container_name = container
        self._prefix = normalize_prefix(prefix)
        self._content_type = content_type
        self._max_single_put = max_single_put_bytes
        # Our own session, to size the connection pool for concurrent puts (requests keeps
        # 10 per host by default). Retries happen in the SDK's retry policy, not in urllib3.
        session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=4,
            pool_maxsize=max_connections,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport = RequestsTransport(
            session=session,
            session_owner=True,
            connection_timeout=timeout_s,
            read_timeout=timeout_s,
            connection_verify=str(ca_bundle) if ca_bundle else True,
        )
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string,
                transport=transport,
                # 3 attempts in all, about 1 s apart (the SDK's default waits 15 s, then 18 s).
                retry_policy=LinearRetry(backoff=1, retry_total=2, random_jitter_range=1),
                max_single_put_size=max_single_put_bytes,
            )
        except (ValueError, TypeError, AzureError):
            transport.close()
            raise ConfigError(
                "the Azure connection string is malformed (its value is not shown): expected "
                "'AccountName=...;AccountKey=...' or 'BlobEndpoint=...;SharedAccessSignature=...'"
            ) from None
        # Never `.url`: it carries the SAS token.
        self._endpoint = f"{self._service.scheme}://{self._service.primary_hostname}"
        self._account = self._service.account_name or "?"
        self._container = self._service.get_container_client(container)

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureBlobStore:
        if settings.azure_connection_string is None or settings.azure_container is None:
            raise ConfigError(
                "store azure needs REPLICATOR_AZURE_CONNECTION_STRING and REPLICATOR_AZURE_CONTAINER"
            )
        return cls(
            connection_string=settings.azure_connection_string.get_secret_value(),
            container=settings.azure_container,
            prefix=settings.azure_prefix,
            ca_bundle=settings.azure_ca_bundle,
            timeout_s=settings.store_timeout_s,
            max_connections=max(16, 2 * settings.write_concurrency),
            encryption_scope=settings.azure_encryption_scope,
        )

    def __repr__(self) -> str:
        return (
            f"AzureBlobStore(endpoint={self._endpoint!r}, container={self._container_name!r}, "
            f"prefix={self._prefix!r})"
        )

    @property
    def name(self) -> str:
        return "azure"

    @property
    def container(self) -> str:
        return self._container_name

    @property
    def prefix(self) -> str:
        """The name prefix this store owns, with its trailing '/' ('' for the whole container)."""
        return self._prefix

    # --- the Store interface ----------------------------------------------------------

    def health_check(self) -> None:
        # List Blobs rather than Get Container Properties: a container SAS (read/list)
        # authorises the former but not the latter, and listing is what catch-up needs.
        try:
            pages = self._container.list_blobs(
                name_starts_with=self._prefix or None, results_per_page=1
            ).by_page()
            next(pages, None)
        except AzureError as exc:
            raise self._error(exc, "list container") from None

    def create_if_absent(
        self, key: str, data: bytes, md5: bytes, metadata: Mapping[str, str]
    ) -> PutOutcome:
        blob = self._container.get_blob_client(self._full(key))
        md5_hex = md5.hex()
        for meta_name in metadata:
            if not _METADATA_NAME.match(meta_name):
                raise StoreError(
                    self.name,
                    StoreErrorKind.OTHER,
                    f"put {key}: metadata name {meta_name!r} is not valid on Azure "
                    "(letters, digits and '_', not starting with a digit)",
                )
        kwargs: dict[str, Any] = {}
        if len(data) <= self._max_single_put:
            # One Put Blob: the service checks the body against our MD5.
            kwargs["headers"] = {"Content-MD5": base64.b64encode(md5).decode("ascii")}
        else:
            # Put Block + Put Block List: each block is checked against the MD5 the SDK
            # computes; the whole-blob MD5 is only stored, so check it here first.
            if hashlib.md5(data).digest() != md5:
                raise StoreError(
                    self.name,
                    StoreErrorKind.BAD_DIGEST,
                    f"put {key}: the MD5 given does not match the bytes (checked locally)",
                )
            kwargs["validate_content"] = True
        if self._encryption_scope:
            kwargs["encryption_scope"] = self._encryption_scope
        try:
            blob.upload_blob(
                data,
                blob_type=BlobType.BLOCKBLOB,
                length=len(data),
                overwrite=False,
                metadata=dict(metadata),
                content_settings=ContentSettings(
                    content_type=self._content_type, content_md5=bytearray(md5)
                ),
                **kwargs,
            )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            if isinstance(exc, ResourceModifiedError) or _code(exc) == "BlobAlreadyExists":
                existing = self._existing_md5(key)
                if existing == md5_hex:
                    return PutOutcome.ALREADY_PRESENT
                raise ConflictError(self.name, key, existing, md5_hex) from None
            raise self._error(exc, f"put {key}") from None
        except AzureError as exc:
            raise self._error(exc, f"put {key}") from None
        return PutOutcome.CREATED

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        full_prefix = self._prefix + prefix
        kwargs: dict[str, Any] = {}
        full_after: str | None = None
        if start_after is not None:
            full_after = self._prefix + start_after
            # Azure starts *at* start_from (inclusive); Azurite ignores it altogether. Either
            # way the filter below keeps only names > start_after. Sent only when it narrows
            # the listing (inside the listed prefix).
            if full_after.startswith(full_prefix) and full_after != full_prefix:
                kwargs["start_from"] = full_after
        cut = len(self._prefix)
        try:
            for item in self._container.list_blobs(name_starts_with=full_prefix or None, **kwargs):
                name: str = item.name
                if not name.startswith(full_prefix):  # never outside our prefix
                    continue
                if full_after is not None and name <= full_after:
                    continue
                yield ObjectInfo(
                    key=name[cut:],
                    size=int(item.size),
                    md5_hex=_md5_hex(item.content_settings.content_md5),
                )
        except AzureError as exc:
            raise self._error(exc, f"list {prefix!r}") from None

    def read(self, key: str) -> bytes:
        try:
            return self._container.get_blob_client(self._full(key)).download_blob().readall()
        except AzureError as exc:
            raise self._error(exc, f"read {key}") from None

    def delete(self, key: str) -> None:
        try:
            self._container.get_blob_client(self._full(key)).delete_blob(delete_snapshots="include")
        except AzureError as exc:
            if _code(exc) == "BlobNotFound":
                return
            raise self._error(exc, f"delete {key}") from None

    def close(self) -> None:
        self._service.close()

    # --- helpers -------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return full_key(self._prefix, key)

    def _existing_md5(self, key: str) -> str | None:
        """The MD5 of the blob at `key` (which exists): its MD5 property, else from its bytes."""
        blob = self._container.get_blob_client(self._full(key))
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise self._error(exc, f"head {key}") from None
            raise StoreError(
                self.name,
                StoreErrorKind.UNAVAILABLE,
                f"put {key}: refused as existing but the blob is not readable yet; retry",
            ) from None
        except AzureError as exc:
            raise self._error(exc, f"head {key}") from None
        md5_hex = _md5_hex(props.content_settings.content_md5)
        if md5_hex is not None:
            return md5_hex
        # No MD5 property (a blob committed in blocks by another writer): hash the bytes.
        return hashlib.md5(self.read(key)).hexdigest()

    def _error(self, exc: AzureError, operation: str) -> StoreError:
        kind = azure_exception_kind(exc)
        code = _code(exc)
        detail = error_detail(code, getattr(exc, "status_code", None), type(exc).__name__)
        where = f"container {self._container_name} of account {self._account} at {self._endpoint}"
        if kind is StoreErrorKind.AUTH:
            message = (
                f"{operation}: access denied to container {self._container_name}: check the "
                f"Azure connection string (account key or SAS and its permissions) [{detail}]"
            )
        elif kind is StoreErrorKind.NOT_FOUND:
            if code == "BlobNotFound":
                message = f"{operation}: no such blob in {where} [{detail}]"
            else:
                message = f"{operation}: container not found: {where} [{detail}]"
        elif kind is StoreErrorKind.UNAVAILABLE:
            message = f"{operation}: cannot reach Azure Blob endpoint {self._endpoint} [{detail}]"
        else:
            tls = is_tls_failure(exc)
            message = common_message(operation, kind, tls, self._endpoint, where, detail)
        return StoreError(self.name, kind, message)
