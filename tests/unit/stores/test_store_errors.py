"""How the stores classify SDK failures, and what they put in messages: pure, no server."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, cast

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from pydantic import SecretStr

from replicator.config import Settings, StoreName
from replicator.errors import ConfigError, StoreErrorKind
from replicator.stores.azure import AzureBlobStore, azure_error_kind, azure_exception_kind
from replicator.stores.factory import build_stores
from replicator.stores.s3 import S3Store, md5_from_etag, s3_error_kind, s3_exception_kind

K = StoreErrorKind


# --------------------------------------------------------------------------- S3


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("BadDigest", 400, K.BAD_DIGEST),
        ("XAmzContentSHA256Mismatch", 400, K.BAD_DIGEST),
        ("AccessDenied", 403, K.AUTH),
        ("InvalidAccessKeyId", 403, K.AUTH),
        ("SignatureDoesNotMatch", 403, K.AUTH),
        ("RequestTimeTooSkewed", 403, K.AUTH),
        ("403", 403, K.AUTH),  # HEAD responses have no body: the code is the status
        (None, 403, K.AUTH),
        ("NoSuchBucket", 404, K.NOT_FOUND),
        ("NoSuchKey", 404, K.NOT_FOUND),
        ("404", 404, K.NOT_FOUND),
        ("InternalError", 500, K.UNAVAILABLE),
        ("ServiceUnavailable", 503, K.UNAVAILABLE),
        ("SlowDown", 503, K.UNAVAILABLE),
        ("503", 503, K.UNAVAILABLE),
        ("RequestTimeout", 400, K.UNAVAILABLE),
        ("TooManyRequests", 429, K.UNAVAILABLE),
        (None, 502, K.UNAVAILABLE),
        ("InvalidArgument", 400, K.OTHER),
        ("InvalidBucketName", 400, K.OTHER),
        ("EntityTooLarge", 400, K.OTHER),
        (None, None, K.OTHER),
    ],
)
def test_s3_error_kind(code: str | None, status: int | None, kind: StoreErrorKind) -> None:
    assert s3_error_kind(code, status) is kind


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), K.UNAVAILABLE),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), K.UNAVAILABLE),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), K.UNAVAILABLE),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), K.UNAVAILABLE),
        (ResponseStreamingError(error="reset"), K.UNAVAILABLE),
        (SSLError(endpoint_url="https://x", error=Exception("bad cert")), K.OTHER),
        (NoCredentialsError(), K.AUTH),
        (_client_error("BadDigest", 400), K.BAD_DIGEST),
        (_client_error("SlowDown", 503), K.UNAVAILABLE),
        (_client_error("AccessDenied", 403), K.AUTH),
        (_client_error("NoSuchBucket", 404), K.NOT_FOUND),
        (ValueError("not botocore"), K.OTHER),
    ],
)
def test_s3_exception_kind(exc: Exception, kind: StoreErrorKind) -> None:
    assert s3_exception_kind(exc) is kind


@pytest.mark.parametrize(
    ("etag", "md5"),
    [
        ('"4e8403e9463e59ea5939a33d1245a66c"', "4e8403e9463e59ea5939a33d1245a66c"),
        ("4E8403E9463E59EA5939A33D1245A66C", "4e8403e9463e59ea5939a33d1245a66c"),
        ('W/"4e8403e9463e59ea5939a33d1245a66c"', "4e8403e9463e59ea5939a33d1245a66c"),
        ('"4e8403e9463e59ea5939a33d1245a66c-2"', None),  # multipart
        ('"0x8DC1234567890AB"', None),
        ('""', None),
        ("", None),
        (None, None),
    ],
)
def test_md5_from_etag(etag: str | None, md5: str | None) -> None:
    assert md5_from_etag(etag) == md5


def test_s3_prefix_is_normalised_and_keys_must_be_relative() -> None:
    for prefix, expected in [("replicator", "replicator/"), ("/a/b/", "a/b/"), ("", "")]:
        store = S3Store("http://127.0.0.1:1", "fr-par", "b", prefix, "AK", "SK")
        try:
            assert store.prefix == expected
        finally:
            store.close()
    store = S3Store("http://127.0.0.1:1", "fr-par", "b", "p", "AK", "SK")
    try:
        with pytest.raises(ValueError, match="relative"):
            store.read("/abs")
        with pytest.raises(ValueError):
            store.delete("")
    finally:
        store.close()


def test_s3_bad_endpoint_is_a_config_error_without_user_info() -> None:
    with pytest.raises(ConfigError) as info:
        S3Store("ftp://user:pa55word@host", "fr-par", "b", "p", "AK", "SK")
    assert "pa55word" not in str(info.value)


# --------------------------------------------------------------------------- Azure


@pytest.mark.parametrize(
    ("status", "code", "message", "kind"),
    [
        (400, "Md5Mismatch", "", K.BAD_DIGEST),
        (400, "InvalidMd5", "", K.BAD_DIGEST),
        (400, "InvalidOperation", "Provided contentMD5 doesn't match.", K.BAD_DIGEST),  # Azurite
        (400, "InvalidOperation", "something else", K.OTHER),
        (403, "AuthenticationFailed", "", K.AUTH),
        (403, "AuthorizationFailure", "", K.AUTH),
        (403, "AuthorizationPermissionMismatch", "", K.AUTH),
        (401, None, "", K.AUTH),
        (404, "ContainerNotFound", "", K.NOT_FOUND),
        (404, "BlobNotFound", "", K.NOT_FOUND),
        (404, None, "", K.NOT_FOUND),
        (500, "InternalError", "", K.UNAVAILABLE),
        (503, "ServerBusy", "", K.UNAVAILABLE),
        (500, "OperationTimedOut", "", K.UNAVAILABLE),
        (409, "ContainerBeingDeleted", "", K.UNAVAILABLE),
        (408, None, "", K.UNAVAILABLE),
        (409, "LeaseIdMissing", "", K.OTHER),
        (400, "InvalidMetadata", "", K.OTHER),
        (None, None, "", K.OTHER),
    ],
)
def test_azure_error_kind(
    status: int | None, code: str | None, message: str, kind: StoreErrorKind
) -> None:
    assert azure_error_kind(status, code, message) is kind


class _Response:
    """The little of an HTTP response that HttpResponseError reads."""

    def __init__(self, status: int, code: str) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = {"x-ms-error-code": code}
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        return ""


def _storage_error(status: int, code: str) -> HttpResponseError:
    """An error as the storage SDK raises it: process_storage_error sets `error_code`."""
    exc = HttpResponseError(response=_Response(status, code))
    exc.error_code = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ServiceRequestError("connection refused"), K.UNAVAILABLE),
        (ServiceRequestTimeoutError("connect timeout"), K.UNAVAILABLE),
        (ServiceResponseError("reset"), K.UNAVAILABLE),
        (ServiceResponseTimeoutError("read timeout"), K.UNAVAILABLE),
        (IncompleteReadError("short body"), K.UNAVAILABLE),
        (ClientAuthenticationError("no"), K.AUTH),
        (ResourceNotFoundError("gone"), K.NOT_FOUND),
        (_storage_error(503, "ServerBusy"), K.UNAVAILABLE),
        (_storage_error(403, "AuthorizationFailure"), K.AUTH),
        (_storage_error(400, "Md5Mismatch"), K.BAD_DIGEST),
        (_storage_error(400, "InvalidHeaderValue"), K.OTHER),
        (ValueError("not azure"), K.OTHER),
    ],
)
def test_azure_exception_kind(exc: Exception, kind: StoreErrorKind) -> None:
    assert azure_exception_kind(exc) is kind


SECRET_KEY = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWstMTIzNDU2Nzg5MA=="


@pytest.mark.parametrize(
    "connection_string",
    [
        "",
        "garbage-" + SECRET_KEY,
        f"AccountKey={SECRET_KEY}",  # no account name, no endpoint
    ],
)
def test_a_malformed_connection_string_is_a_config_error_that_hides_it(
    connection_string: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        AzureBlobStore(connection_string, "container", "prefix")
    text = "".join(traceback.format_exception(info.value))
    assert SECRET_KEY not in text
    assert "connection string" in str(info.value)


def test_azure_repr_and_prefix_never_show_the_sas() -> None:
    sas = "sv=2025-01-05&sr=c&sp=rl&se=2030-01-01&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
    store = AzureBlobStore(
        f"BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature={sas}",
        "container",
        "/replicator/",
    )
    try:
        assert "sig=" not in repr(store)
        assert "c2VjcmV0LXNpZ25hdHVyZQ" not in repr(store)
        assert store.prefix == "replicator/"
        assert store.name == "azure"
    finally:
        store.close()


# --------------------------------------------------------------------------- factory


def _settings(stores: str, tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap="127.0.0.1:9092",
        stores=[cast(StoreName, name) for name in stores.split(",")],
        s3_endpoint="http://127.0.0.1:1",
        s3_bucket="bucket",
        s3_access_key=SecretStr("AK"),
        s3_secret_key=SecretStr("SK"),
        azure_connection_string=SecretStr(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={SECRET_KEY};BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
        ),
        azure_container="container",
        schemas_dir=tmp_path,
    )


@pytest.mark.parametrize(
    ("stores", "names"),
    [("s3,azure", ["s3", "azure"]), ("azure,s3", ["azure", "s3"]), ("azure", ["azure"])],
)
def test_build_stores_follows_the_configured_order(
    stores: str, names: list[str], tmp_path: Path
) -> None:
    built = build_stores(_settings(stores, tmp_path))
    try:
        assert [s.name for s in built] == names
    finally:
        for store in built:
            store.close()
