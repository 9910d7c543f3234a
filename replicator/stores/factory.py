"""Build the configured stores, in the order of `settings.stores`."""

from __future__ import annotations

from replicator.config import Settings
from replicator.errors import ConfigError
from replicator.stores.azure import AzureBlobStore
from replicator.stores.base import Store
from replicator.stores.s3 import S3Store

__all__ = ["build_store", "build_stores"]


def build_store(settings: Settings, name: str) -> Store:
    """One store by name ("s3" or "azure"). No request is sent: clients connect lazily."""
    if name == "s3":
        return S3Store.from_settings(settings)
    if name == "azure":
        return AzureBlobStore.from_settings(settings)
    raise ConfigError(f"unknown store {name!r} (known: s3, azure)")


def build_stores(settings: Settings) -> list[Store]:
    """Every configured store, in the order of `settings.stores`.

    If one cannot be built (a ConfigError), those already built are closed first.
    """
    stores: list[Store] = []
    try:
        for name in settings.stores:
            stores.append(build_store(settings, name))
    except BaseException:
        for store in stores:
            store.close()
        raise
    return stores
