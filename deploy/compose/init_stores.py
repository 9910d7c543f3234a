"""Create the bucket and the container the docker-compose replicator writes to.

Run by the `init-stores` service of docker-compose.yml, from the replicator's own image and
with the replicator's own settings (environment + REPLICATOR_SECRETS_DIR), so it creates
exactly what `replicator run` will write to. Idempotent; retries while the emulators start.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

import boto3
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from replicator.config import Settings, load_settings

DEADLINE_S = 120.0


def create_bucket(settings: Settings) -> str:
    assert settings.s3_bucket and settings.s3_access_key and settings.s3_secret_key
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    try:
        s3.create_bucket(Bucket=settings.s3_bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    return f"bucket {settings.s3_bucket}"


def create_container(settings: Settings) -> str:
    assert settings.azure_container and settings.azure_connection_string
    service = BlobServiceClient.from_connection_string(
        settings.azure_connection_string.get_secret_value()
    )
    with contextlib.suppress(ResourceExistsError):
        service.create_container(settings.azure_container)
    return f"container {settings.azure_container}"


def retry(step: Callable[[Settings], str], settings: Settings) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            print(f"ready: {step(settings)}", flush=True)
            return
        except (BotoCoreError, ClientError, AzureError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {step.__name__}: {type(exc).__name__}") from None
            time.sleep(2)


def main() -> int:
    settings = load_settings()
    if "s3" in settings.stores:
        retry(create_bucket, settings)
    if "azure" in settings.stores:
        retry(create_container, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
