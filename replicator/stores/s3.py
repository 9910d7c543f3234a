"""The S3 store (Scaleway Object Storage in production, SeaweedFS locally).

Every key handed to a method is relative: the store reads and writes only under
`<prefix>/` in its bucket, and `list` gives the keys back without that prefix.

Errors: every botocore failure becomes a `StoreError` with a kind (see `s3_error_kind` and
`s3_exception_kind`). Messages are built from the bucket, the endpoint (without any user
info), the operation and the S3 error code only: never from the SDK's own text, and the
SDK exception is not chained (``from None``), so a logged traceback cannot carry a secret.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from replicator.config import sse_customer_key_bytes
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
    from mypy_boto3_s3 import S3Client

    from replicator.config import Settings

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "S3Store",
    "md5_from_etag",
    "quiet_sdk_loggers",
    "s3_error_kind",
    "s3_exception_kind",
]

SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")

_CODES = ErrorCodes(
    digest=frozenset({"BadDigest", "XAmzContentSHA256Mismatch"}),
    auth=frozenset(
        {
            "AccessDenied",
            "AccountProblem",
            "AllAccessDisabled",
            "ExpiredToken",
            "InvalidAccessKeyId",
            "InvalidSecurity",
            "InvalidToken",
            "RequestTimeTooSkewed",
            "SignatureDoesNotMatch",
            "TokenRefreshRequired",
        }
    ),
    not_found=frozenset({"NoSuchBucket", "NoSuchKey", "NotFound"}),
    unavailable=frozenset(
        {
            "InternalError",
            "OperationAborted",
            "RequestTimeout",
            "RequestTimeoutException",
            "ServiceUnavailable",
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "TooManyRequests",
        }
    ),
)
# The key was created concurrently or exists: look at what is there before deciding.
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_HEAD_BUCKET = "head bucket"


def quiet_sdk_loggers(level: int = logging.WARNING) -> None:
    """Raise the S3 SDK's loggers (and urllib3's) to `level`.

    At DEBUG they log request headers and URLs; nothing below WARNING from them is useful to
    an operator, and keeping them quiet keeps request details out of the service's logs.
    """
    quiet_loggers(SDK_LOGGERS, level)


def md5_from_etag(etag: str | None) -> str | None:
    """The MD5 (lower-case hex) an ETag stands for, or None when it is not a plain MD5.

    A single-part upload's ETag is the MD5 of the body; a multipart one ends in '-<parts>'.
    (Objects encrypted with SSE-KMS / SSE-C on AWS also have ETags that are not the MD5; the
    replicator does not use them.)
    """
    if not etag:
        return None
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"').lower()
    return value if _MD5_HEX.match(value) else None


def s3_error_kind(code: str | None, status: int | None) -> StoreErrorKind:
    """The kind of an S3 error response, from its error code and HTTP status."""
    return response_kind(_CODES, code, status)


def s3_exception_kind(exc: Exception) -> StoreErrorKind:
    """The kind of any botocore exception (an error response or a transport failure)."""
    if isinstance(exc, ClientError):
        return s3_error_kind(_code(exc), _status(exc))
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StoreErrorKind.AUTH
    if isinstance(exc, SSLError):
        # A certificate the CA bundle does not trust is a setting to fix, not an outage.
        return StoreErrorKind.OTHER
    if isinstance(
        exc,
        (
            EndpointConnectionError,
            ConnectTimeoutError,
            ReadTimeoutError,
            ConnectionClosedError,
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
        ),
    ):
        return StoreErrorKind.UNAVAILABLE
    return StoreErrorKind.OTHER


def _code(exc: ClientError) -> str | None:
    code = exc.response.get("Error", {}).get("Code")
    return str(code) if code else None


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _safe_endpoint(endpoint: str) -> str:
    """The endpoint URL without user info, query or fragment (fit for a message)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class S3Store:
    """A `Store` on an S3 bucket, under a key prefix of its own."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        bucket: str,
        prefix: str,
        access_key: str,
        secret_key: str,
        ca_bundle: Path | str | None = None,
        timeout_s: float = 10.0,
        *,
        max_pool_connections: int = 16,
        content_type: str = DEFAULT_CONTENT_TYPE,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        sse_customer_key: bytes | None = None,
    ) -> None:
        quiet_sdk_loggers()
        # Server-side encryption asked for on every put (AES256 or aws:kms [+ key id]).
        self._sse_args: dict[str, str] = {}
        if sse:
            self._sse_args["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            self._sse_args["SSEKMSKeyId"] = sse_kms_key_id
        # SSE-C: the same customer key on every put, head and get (botocore base64-encodes
        # it and adds its MD5 header); the service keeps no key, so no read works without it.
        self._ssec_args: dict[str, Any] = {}
        if sse_customer_key is not None:
            if sse:
                raise ConfigError("SSE-C cannot be combined with another server-side encryption")
            if len(sse_customer_key) != 32:
                raise ConfigError("the SSE-C key must be 32 bytes (AES-256)")
            self._ssec_args = {
                "SSECustomerAlgorithm": "AES256",
                "SSECustomerKey": sse_customer_key,
            }
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"S3 endpoint {_safe_endpoint(endpoint)!r} is not an http(s) URL")
        self._endpoint = _safe_endpoint(endpoint)
        self._bucket = bucket
        self._prefix = normalize_prefix(prefix)
        self._content_type = content_type
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            # 3 attempts in all ("max_attempts": 3 would mean 3 retries, i.e. 4 attempts).
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=max_pool_connections,
            # We send Content-MD5 ourselves (the integrity check that matters, and the ETag
            # we compare); botocore's extra CRC checksums (default since 1.36) are not needed
            # and some S3-compatible services refuse them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="replicator",
        )
        session = boto3.session.Session()
        try:
            self._client: S3Client = session.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                verify=str(ca_bundle) if ca_bundle else None,
                config=config,
            )
        except (ValueError, BotoCoreError):
            raise ConfigError(
                f"cannot configure the S3 client for endpoint {self._endpoint} (region {region!r})"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        if (
            settings.s3_endpoint is None
            or settings.s3_bucket is None
            or settings.s3_access_key is None
            or settings.s3_secret_key is None
        ):
            raise ConfigError(
                "store s3 needs REPLICATOR_S3_ENDPOINT, REPLICATOR_S3_BUCKET, "
                "REPLICATOR_S3_ACCESS_KEY and REPLICATOR_S3_SECRET_KEY"
            )
        return cls(
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            ca_bundle=settings.s3_ca_bundle,
            timeout_s=settings.store_timeout_s,
            max_pool_connections=max(16, 2 * settings.write_concurrency),
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            sse_customer_key=(
                sse_customer_key_bytes(settings.s3_sse_customer_key)
                if settings.s3_sse_customer_key is not None
                else None
            ),
        )

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self._endpoint!r}, bucket={self._bucket!r}, prefix={self._prefix!r})"

    @property
    def name(self) -> str:
        return "s3"

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        """The key prefix this store owns, with its trailing '/' ('' for the whole bucket)."""
        return self._prefix

    # --- the Store interface ----------------------------------------------------------

    def health_check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, _HEAD_BUCKET) from None

    def create_if_absent(
        self, key: str, data: bytes, md5: bytes, metadata: Mapping[str, str]
    ) -> PutOutcome:
        full = self._full(key)
        md5_hex = md5.hex()
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=full,
                Body=data,
                ContentMD5=base64.b64encode(md5).decode("ascii"),
                ContentType=self._content_type,
                IfNoneMatch="*",
                Metadata=dict(metadata),
                **self._sse_args,  # type: ignore[arg-type]
                **self._ssec_args,
            )
        except ClientError as exc:
            if _code(exc) in _EXISTS_CODES or _status(exc) == 412:
                existing = self._existing_md5(key)
                if existing == md5_hex:
                    return PutOutcome.ALREADY_PRESENT
                raise ConflictError(self.name, key, existing, md5_hex) from None
            raise self._error(exc, f"put {key}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"put {key}") from None
        return PutOutcome.CREATED

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._prefix + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self._prefix + start_after
        cut = len(self._prefix)
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", []):
                    full = obj.get("Key", "")
                    if not full.startswith(self._prefix):  # never outside our prefix
                        continue
                    yield ObjectInfo(
                        key=full[cut:],
                        size=int(obj.get("Size", 0)),
                        md5_hex=md5_from_etag(obj.get("ETag")),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"list {prefix!r}") from None

    def read(self, key: str) -> bytes:
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._full(key), **self._ssec_args
            )
            body = response["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"read {key}") from None

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._full(key))
        except ClientError as exc:
            if _code(exc) == "NoSuchKey":
                return
            raise self._error(exc, f"delete {key}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"delete {key}") from None

    def close(self) -> None:
        self._client.close()

    # --- helpers -------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return full_key(self._prefix, key)

    def _existing_md5(self, key: str) -> str | None:
        """The MD5 of the object at `key` (which exists): from its ETag, else from its bytes."""
        try:
            head = self._client.head_object(
                Bucket=self._bucket, Key=self._full(key), **self._ssec_args
            )
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("NoSuchKey", "NotFound"):
                # Refused as existing, yet gone (deleted, or a concurrent create not finished).
                raise StoreError(
                    self.name,
                    StoreErrorKind.UNAVAILABLE,
                    f"put {key}: refused as existing but the object is not readable yet; retry",
                ) from None
            raise self._error(exc, f"head {key}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"head {key}") from None
        # Under SSE-KMS the ETag is not the MD5 of the body (AWS documents it): hash the bytes.
        # Nor under SSE-C (AWS: the ETag of an SSE-C object is not the MD5 of its data).
        kms = self._sse_args.get("ServerSideEncryption") == "aws:kms" or bool(self._ssec_args)
        md5_hex = None if kms else md5_from_etag(head.get("ETag"))
        if md5_hex is not None:
            return md5_hex
        # A multipart (or otherwise non-MD5) ETag: hash the bytes to know.
        return hashlib.md5(self.read(key)).hexdigest()

    def _error(self, exc: Exception, operation: str) -> StoreError:
        kind = s3_exception_kind(exc)
        where = f"bucket {self._bucket} at {self._endpoint}"
        if isinstance(exc, ClientError):
            code = _code(exc)
            detail = error_detail(code, _status(exc), "error")
        else:
            code, detail = None, type(exc).__name__
        if kind is StoreErrorKind.AUTH:
            message = (
                f"{operation}: access denied to bucket {self._bucket}: check the S3 keys [{detail}]"
            )
        elif kind is StoreErrorKind.NOT_FOUND:
            if code == "NoSuchBucket" or operation == _HEAD_BUCKET:
                message = (
                    f"{operation}: bucket {self._bucket} not found at {self._endpoint} [{detail}]"
                )
            else:
                message = f"{operation}: no such object in {where} [{detail}]"
        elif kind is StoreErrorKind.UNAVAILABLE:
            message = f"{operation}: cannot reach S3 endpoint URL: {self._endpoint} [{detail}]"
        else:
            tls = isinstance(exc, SSLError)
            message = common_message(operation, kind, tls, self._endpoint, where, detail)
        return StoreError(self.name, kind, message)
