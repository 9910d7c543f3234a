"""docs/configuration.md is generated from the settings model and must not drift from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicator.config import Settings, load_settings
from replicator.devtools import docs_gen

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == docs_gen.render(), (
        "docs/configuration.md is stale: run `python -m replicator.devtools.docs_gen`"
    )


def test_every_setting_is_documented_once_with_its_env_var() -> None:
    text = docs_gen.render()
    for name in Settings.model_fields:
        row = f"| `{name}` | `REPLICATOR_{name.upper()}` |"
        assert text.count(row) == 1, name


def test_every_setting_has_a_description() -> None:
    for name, info in Settings.model_fields.items():
        assert info.description or name in docs_gen.FALLBACK_DESCRIPTIONS, (
            f"{name} has no description: add one in replicator/config.py"
        )


def test_fallbacks_are_only_for_fields_without_their_own_description() -> None:
    fields = Settings.model_fields
    for name in docs_gen.FALLBACK_DESCRIPTIONS:
        assert name in fields, f"{name} is no setting any more"
        assert not fields[name].description, (
            f"{name} now has a description in config.py: drop its fallback in docs_gen"
        )


def test_secrets_show_no_default_and_are_the_expected_fields() -> None:
    secrets = docs_gen.secret_fields()
    assert set(secrets) == {
        "s3_access_key",
        "s3_secret_key",
        "s3_sse_customer_key",
        "azure_connection_string",
        "kafka_sasl_password",
        "schema_registry_basic_auth",
        "schema_registry_bearer_token",
    }
    text = docs_gen.render()
    for name in secrets:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |"))
        assert "none (secret)" in line


def test_no_machine_specific_path_in_the_reference() -> None:
    text = docs_gen.render()
    assert str(docs_gen.REPO_ROOT) not in text


def test_check_and_write_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "configuration.md"
    schema = tmp_path / "values.schema.json"
    schema.write_text(docs_gen.CHART_SCHEMA_PATH.read_text(encoding="utf-8").replace("\n", " "))
    args = ["--output", str(target), "--chart-schema", str(schema)]
    assert docs_gen.main(["--check", *args]) == 1
    assert "is stale" in capsys.readouterr().err
    assert docs_gen.main(args) == 0
    assert docs_gen.main(["--check", *args]) == 0
    assert target.read_text(encoding="utf-8") == docs_gen.render()
    assert schema.read_text(encoding="utf-8") == docs_gen.CHART_SCHEMA_PATH.read_text(
        encoding="utf-8"
    )
    capsys.readouterr()


def test_secret_files_are_named_like_their_env_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the reference (and the Helm chart, which mounts Secrets under these file names)
    says about REPLICATOR_SECRETS_DIR is what the settings loader does."""
    for key in list(os.environ):
        if key.startswith("REPLICATOR_"):
            monkeypatch.delenv(key)
    (tmp_path / "REPLICATOR_S3_ACCESS_KEY").write_text("ak\n")
    (tmp_path / "REPLICATOR_S3_SECRET_KEY").write_text("sk")
    monkeypatch.setenv("REPLICATOR_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("REPLICATOR_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("REPLICATOR_STORES", "s3")
    monkeypatch.setenv("REPLICATOR_S3_ENDPOINT", "https://s3.fr-par.scw.cloud")
    monkeypatch.setenv("REPLICATOR_S3_BUCKET", "bucket")
    settings = load_settings()
    assert settings.s3_access_key is not None and settings.s3_secret_key is not None
    assert settings.s3_access_key.get_secret_value() == "ak"
    assert settings.s3_secret_key.get_secret_value() == "sk"
