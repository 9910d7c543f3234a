"""Change-data-capture replicator: Kafka -> both clouds (Azure Blob and Scaleway S3)."""

__version__ = "0.1.0"
