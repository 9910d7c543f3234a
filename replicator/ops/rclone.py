"""An independent check of P3 with rclone (Debian's package): `rclone check` between the S3
store and the Azure store compares every object's size and MD5 under both prefixes.

The rclone configuration holds secrets (the S3 keys, a container SAS): it is written to a
file readable by its owner only, in a temporary folder removed afterwards, and rclone's output
is scrubbed of those values before anyone sees it.

Remotes (the forms that work with rclone 1.60; its `account`/`endpoint` and `use_emulator`
forms of an Azure remote do not reach the Azurite emulator):
- S3: `type = s3`, `provider = Other`, the endpoint, path-style addressing, the keys;
- Azure: `type = azureblob` with `sas_url` = the container URL plus a container SAS with read
  and list permissions (made with the account key of the connection string, or the SAS the
  connection string already carries).
rclone runs without AWS_CA_BUNDLE (rclone 1.60 refuses S3 remotes when it is set); a custom
CA is passed with `--ca-cert` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from replicator.config import Settings
from replicator.errors import ConfigError

S3_REMOTE = "s3store"
AZURE_REMOTE = "azstore"


def _conn_parts(connection_string: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in connection_string.split(";"):
        if "=" in part:
            name, _, value = part.partition("=")
            out[name.strip()] = value.strip()
    return out


def container_sas_url(settings: Settings, hours: float = 2.0) -> str:
    """The Azure container's URL with a read+list SAS (a secret)."""

    if settings.azure_connection_string is None or settings.azure_container is None:
        raise ConfigError("rclone check needs the Azure store configured")
    parts = _conn_parts(settings.azure_connection_string.get_secret_value())
    container = settings.azure_container
    account = parts.get("AccountName")
    endpoint = parts.get("BlobEndpoint")
    if not endpoint:
        if not account:
            raise ConfigError(
                "the Azure connection string names neither BlobEndpoint nor AccountName"
            )
        protocol = parts.get("DefaultEndpointsProtocol", "https")
        suffix = parts.get("EndpointSuffix", "core.windows.net")
        endpoint = f"{protocol}://{account}.blob.{suffix}"
    endpoint = endpoint.rstrip("/")
    sas = parts.get("SharedAccessSignature")
    if sas is None:
        key = parts.get("AccountKey")
        if not account or not key:
            raise ConfigError("the Azure connection string has neither an account key nor a SAS")
        sas = generate_container_sas(
            account_name=account,
            container_name=container,
            account_key=key,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )
    return f"{endpoint}/{container}?{sas.lstrip('?')}"


def rclone_config(settings: Settings) -> tuple[str, list[str]]:
    """The configuration text and the secret values in it (to scrub from any output)."""
    if (
        settings.s3_endpoint is None
        or settings.s3_access_key is None
        or settings.s3_secret_key is None
    ):
        raise ConfigError("rclone check needs the S3 store configured")
    access = settings.s3_access_key.get_secret_value()
    secret = settings.s3_secret_key.get_secret_value()
    sas_url = container_sas_url(settings)
    text = (
        f"[{S3_REMOTE}]\n"
        "type = s3\n"
        "provider = Other\n"
        f"endpoint = {settings.s3_endpoint}\n"
        f"region = {settings.s3_region}\n"
        "force_path_style = true\n"
        f"access_key_id = {access}\n"
        f"secret_access_key = {secret}\n"
        "\n"
        f"[{AZURE_REMOTE}]\n"
        "type = azureblob\n"
        f"sas_url = {sas_url}\n"
    )
    sas_query = sas_url.split("?", 1)[1]
    return text, [secret, access, sas_query, sas_url]


def remote_paths(settings: Settings) -> tuple[str, str]:
    s3_path = "/".join(x for x in (settings.s3_bucket, settings.s3_prefix.strip("/")) if x)
    az_path = "/".join(x for x in (settings.azure_container, settings.azure_prefix.strip("/")) if x)
    return f"{S3_REMOTE}:{s3_path}", f"{AZURE_REMOTE}:{az_path}"


@dataclass
class RcloneResult:
    returncode: int
    output: str  # scrubbed of secrets
    command: list[str]


def scrub(text: str, secrets: list[str]) -> str:
    for value in sorted(secrets, key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


def rclone_check(
    settings: Settings,
    extra_args: list[str] | None = None,
    binary: str = "rclone",
    timeout_s: float = 600,
) -> RcloneResult:
    """`rclone check <s3 store> <azure store>` with sizes and MD5s compared; exit code 0 only
    when no object differs and none is only on one side."""
    exe = shutil.which(binary)
    if exe is None:
        raise ConfigError(
            "rclone is not installed (make setup installs it: apt-get install rclone)"
        )
    text, secrets = rclone_config(settings)
    s3_remote, az_remote = remote_paths(settings)
    with tempfile.TemporaryDirectory(prefix="replicator-rclone-") as folder:
        conf = Path(folder) / "rclone.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        command = [exe, "--config", str(conf), "check", s3_remote, az_remote]
        ca = settings.s3_ca_bundle or settings.azure_ca_bundle
        if ca is not None:
            command += ["--ca-cert", str(ca)]
        command += extra_args or []
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "AWS_CA_BUNDLE" and not k.startswith("RCLONE_")
        }
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    output = scrub(proc.stdout + proc.stderr, secrets)
    shown = [exe, "check", s3_remote, az_remote, *(extra_args or [])]
    return RcloneResult(proc.returncode, output, shown)
