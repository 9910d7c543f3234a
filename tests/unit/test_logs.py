"""Logs you can debug from: an exception's type, message and stack as fields, and no secret
in any of them, whatever the exception says."""

from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import SecretStr

from replicator.logs import (
    MASK,
    HumanFormatter,
    JsonFormatter,
    fields,
    mask_secrets,
    register_secrets,
    secrets_of,
)
from tests.support.settings import offline_settings

ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu=="  # a test value
SECRET = "s3-secret-for-the-log-test"  # a test value


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


class StoreBroke(RuntimeError):
    pass


def fail_deep(message: str) -> None:
    try:
        raise ValueError("the cause")
    except ValueError as cause:
        raise StoreBroke(message) from cause


def test_an_error_carries_type_message_and_stack_as_fields() -> None:
    logger, out = capture(JsonFormatter())
    try:
        fail_deep("put failed")
    except StoreBroke:
        logger.error("put_failed", exc_info=True, extra=fields(store="s3"))
    line = json.loads(out.getvalue())
    assert line["event"] == "put_failed" and line["store"] == "s3"
    assert line["exc_type"] == f"{__name__}.StoreBroke"
    assert line["exc_message"] == "put failed"
    assert line["stack"].startswith("Traceback (most recent call last):")
    assert "in fail_deep" in line["stack"]
    assert "ValueError: the cause" in line["stack"]  # the chained cause too
    assert line["stack"].endswith("StoreBroke: put failed")
    assert line["error"] == "StoreBroke: put failed"


def test_a_builtin_exception_type_is_its_plain_name() -> None:
    logger, out = capture(JsonFormatter())
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("oops")
    assert json.loads(out.getvalue())["exc_type"] == "KeyError"


# (text around a credential, the credential): one per shape a library may put in a message
LEAKS = [
    (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};",
        ACCOUNT_KEY,
    ),
    (
        f"GET https://acct.blob.core.windows.net/c?sv=2024&sig={ACCOUNT_KEY[:20]}&se=2030",
        ACCOUNT_KEY[:20],
    ),
    (f"SharedAccessSignature={ACCOUNT_KEY[:30]}", ACCOUNT_KEY[:30]),
    (f"kafka sasl.password={ACCOUNT_KEY[:16]} refused", ACCOUNT_KEY[:16]),
    (f"connect to https://user:{ACCOUNT_KEY[:12]}@host:443/x failed", ACCOUNT_KEY[:12]),
    (f"s3 said: secret_key: {ACCOUNT_KEY[:18]}", ACCOUNT_KEY[:18]),
    (f"Password = {ACCOUNT_KEY[:14]}", ACCOUNT_KEY[:14]),
]


@pytest.mark.parametrize(("leak", "secret"), LEAKS)
@pytest.mark.parametrize("formatter", [JsonFormatter(), HumanFormatter()])
def test_a_credential_inside_an_exception_message_is_masked(
    leak: str, secret: str, formatter: logging.Formatter
) -> None:
    logger, out = capture(formatter)
    try:
        fail_deep(leak)
    except StoreBroke:
        logger.error("failed", exc_info=True)
    text = out.getvalue()
    assert secret not in text
    assert text.count(MASK) >= 2  # in the message and in the stack


def test_a_configured_secret_is_masked_wherever_it_appears() -> None:
    settings = offline_settings(
        s3_access_key=SecretStr("access-id"),
        s3_secret_key=SecretStr(SECRET),
        azure_connection_string=SecretStr(f"AccountName=acct;AccountKey={ACCOUNT_KEY}"),
    )
    assert SECRET in secrets_of(settings)
    register_secrets(secrets_of(settings))
    logger, out = capture(JsonFormatter())
    try:
        raise RuntimeError(f"signature with {SECRET} did not match")  # no shape around it
    except RuntimeError:
        logger.error("failed", exc_info=True, extra=fields(detail=f"x{SECRET}y"))
    text = out.getvalue()
    assert SECRET not in text
    line = json.loads(text)
    assert line["exc_message"] == f"signature with {MASK} did not match"
    assert line["detail"] == f"x{MASK}y"


def test_masking_leaves_ordinary_text_alone() -> None:
    text = "put snds.reimbursements/00001/00000000000000000000-00000000000000000099.avro took 3 ms"
    assert mask_secrets(text) == text
