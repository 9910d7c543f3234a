"""docker-compose.yml and the image it builds (Dockerfile, requirements.lock).

No Docker engine runs here: the compose file is validated with `docker-compose config`
(Debian's docker-compose, installed by `make setup`), and the tests check that its services,
ports, settings and shared files line up with each other and with the project.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import pytest
from packaging.requirements import Requirement

from replicator.config import Settings, load_settings
from replicator.devtools import docs_gen

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
SECRETS_DIR = COMPOSE_DIR / "secrets"
NON_SETTING_ENV = {"REPLICATOR_SECRETS_DIR"}


def yaml_load(text: str) -> dict[str, Any]:
    """One YAML mapping (Helm's parser: the project needs no other YAML library)."""
    return helm.values_from_yaml(text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, paths absolute)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed: `make setup` installs it")
        pytest.skip("docker-compose is not installed (make setup installs it)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COMPOSE_PROJECT_NAME": "replicator-test"},
    )
    assert result.returncode == 0, result.stderr
    return yaml_load(result.stdout)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def env(compose: dict[str, Any], name: str) -> dict[str, str]:
    return {k: str(v) for k, v in service(compose, name).get("environment", {}).items()}


def flags(command: list[str]) -> dict[str, str]:
    """`-name=value` and `--name value` arguments of a command line."""
    out: dict[str, str] = {}
    for i, arg in enumerate(command):
        if arg.startswith("-") and "=" in arg:
            key, value = arg.lstrip("-").split("=", 1)
            out[key] = value
        elif arg.startswith("--") and i + 1 < len(command):
            out[arg[2:]] = command[i + 1]
    return out


def published(compose: dict[str, Any], name: str) -> dict[int, int]:
    """Published port -> container port."""
    return {int(p["published"]): int(p["target"]) for p in service(compose, name)["ports"]}


def bind_mounts(compose: dict[str, Any], name: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    out: dict[str, Path] = {}
    for volume in service(compose, name).get("volumes", []):
        source, target = volume.split(":")[:2]
        assert source.startswith("/"), f"{name}: {volume} is not a bind mount"
        out[target] = Path(source)
    return out


def secret_files() -> dict[str, str]:
    return {
        path.name: path.read_text(encoding="utf-8").strip()
        for path in SECRETS_DIR.iterdir()
        if path.name.startswith("REPLICATOR_")
    }


REPLICATOR_SERVICES = ("replicator", "init-stores", "producer")


# ---- the file is valid and complete -------------------------------------------------------


def test_compose_config_is_valid(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "kafka-init",
        "s3",
        "azurite",
        "init-stores",
        "replicator",
        "producer",
        "prometheus",
        "grafana",
    }


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        if "build" in svc:
            assert image == "replicator:local", name
            assert Path(svc["build"]["context"]) == ROOT, name
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d", tag) and tag != "latest", f"{name}: {image}"
    images = {name: svc["image"] for name, svc in compose["services"].items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["azurite"].startswith("mcr.microsoft.com/azure-storage/azurite:")


def test_the_producer_and_the_init_job_use_the_replicator_image(compose: dict[str, Any]) -> None:
    image = service(compose, "replicator")["image"]
    for name in ("producer", "init-stores"):
        assert service(compose, name)["image"] == image
    assert service(compose, "producer")["command"][0] == "produce"
    assert service(compose, "replicator")["command"] == ["run"]


def test_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = env(compose, "kafka")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("ZOOKEEPER" in key for key in kafka)


def test_bind_mount_sources_exist(compose: dict[str, Any]) -> None:
    for name in compose["services"]:
        for source in bind_mounts(compose, name).values():
            assert source.exists(), f"{name}: {source}"
            assert source.is_relative_to(ROOT), f"{name}: {source}"


# ---- the replicator's settings -----------------------------------------------------------


def test_every_replicator_variable_is_a_setting(compose: dict[str, Any]) -> None:
    for name in REPLICATOR_SERVICES:
        for key in env(compose, name):
            assert key.startswith("REPLICATOR_"), f"{name}: {key}"
            if key in NON_SETTING_ENV:
                continue
            assert key.removeprefix("REPLICATOR_").lower() in Settings.model_fields, (
                f"{name}: {key} is no setting"
            )


def test_secrets_are_files_not_environment(compose: dict[str, Any]) -> None:
    secret_env = {docs_gen.env_name(field) for field in docs_gen.secret_fields()}
    for name in REPLICATOR_SERVICES:
        assert not set(env(compose, name)) & secret_env, name
    files = secret_files()
    assert set(files) <= secret_env
    for name in ("replicator", "init-stores"):
        mounts = bind_mounts(compose, name)
        secrets_dir = env(compose, name)["REPLICATOR_SECRETS_DIR"]
        assert mounts[secrets_dir] == SECRETS_DIR
        volume = next(
            v for v in service(compose, name)["volumes"] if v.startswith(str(SECRETS_DIR))
        )
        assert volume.endswith(":ro")


def test_the_replicator_environment_is_a_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("REPLICATOR_"):
            monkeypatch.delenv(key)
    for key, value in env(compose, "replicator").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REPLICATOR_SECRETS_DIR", str(SECRETS_DIR))
    settings = load_settings()
    assert settings.stores == ["s3", "azure"]
    assert settings.s3_access_key is not None and settings.azure_connection_string is not None


@pytest.fixture
def settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("REPLICATOR_"):
            monkeypatch.delenv(key)
    for key, value in env(compose, "replicator").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REPLICATOR_SECRETS_DIR", str(SECRETS_DIR))
    return load_settings()


# ---- ports and names line up ----------------------------------------------------------------


def test_kafka_bootstrap_is_the_brokers_internal_listener(
    compose: dict[str, Any], settings: Settings
) -> None:
    kafka = env(compose, "kafka")
    advertised = dict(
        item.split("://", 1) for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    listeners = dict(item.split("://", 1) for item in kafka["KAFKA_LISTENERS"].split(","))
    host, port = settings.kafka_bootstrap.split(":")
    assert host == "kafka"
    internal = [name for name, address in advertised.items() if address == f"kafka:{port}"]
    assert len(internal) == 1
    assert listeners[internal[0]] == f":{port}"
    assert env(compose, "producer")["REPLICATOR_KAFKA_BOOTSTRAP"] == settings.kafka_bootstrap
    assert env(compose, "kafka-init")["BOOTSTRAP"] == settings.kafka_bootstrap
    # The EXTERNAL listener is the published one.
    external = next(a for n, a in advertised.items() if a.startswith("localhost:"))
    external_port = int(external.split(":")[1])
    assert published(compose, "kafka")[external_port] == external_port


def test_topics_are_created_for_the_replicator_and_the_producer(
    compose: dict[str, Any], settings: Settings
) -> None:
    init = env(compose, "kafka-init")
    assert init["TOPICS"].split() == [*settings.topics, settings.dead_letter_topic]
    producer = flags(service(compose, "producer")["command"])
    assert producer["partitions"] == init["PARTITIONS"]
    assert "topics" not in producer  # the producer's default topics are the replicator's
    assert settings.topics == ["snds.reimbursements", "snds.prescriptions"]


def test_s3_endpoint_bucket_and_keys(compose: dict[str, Any], settings: Settings) -> None:
    s3 = service(compose, "s3")
    weed = flags(s3["command"])
    assert s3["command"][0] == "mini"
    assert settings.s3_endpoint is not None
    endpoint = urlsplit(settings.s3_endpoint)
    assert (endpoint.hostname, endpoint.port) == ("s3", int(weed["s3.port"]))
    assert published(compose, "s3")[int(weed["s3.port"])] == int(weed["s3.port"])
    assert weed["bucket"] == settings.s3_bucket
    assert weed["master.telemetry"] == "false"
    assert settings.s3_access_key is not None and settings.s3_secret_key is not None
    assert env(compose, "s3")["AWS_ACCESS_KEY_ID"] == settings.s3_access_key.get_secret_value()
    assert env(compose, "s3")["AWS_SECRET_ACCESS_KEY"] == settings.s3_secret_key.get_secret_value()


def test_azure_connection_string_names_azurite(compose: dict[str, Any], settings: Settings) -> None:
    azurite = flags(service(compose, "azurite")["command"])
    assert settings.azure_connection_string is not None
    parts = dict(
        part.split("=", 1)
        for part in settings.azure_connection_string.get_secret_value().split(";")
        if part
    )
    endpoint = urlsplit(parts["BlobEndpoint"])
    assert (endpoint.hostname, endpoint.port) == ("azurite", int(azurite["blobPort"]))
    assert endpoint.path.strip("/") == parts["AccountName"]
    assert azurite["blobHost"] == "0.0.0.0"
    assert "disableTelemetry" in service(compose, "azurite")["command"][-1]
    assert published(compose, "azurite")[int(azurite["blobPort"])] == int(azurite["blobPort"])


def test_metrics_port_is_published_probed_and_scraped(
    compose: dict[str, Any], settings: Settings
) -> None:
    port = settings.metrics_port
    assert published(compose, "replicator")[port] == port
    healthcheck = " ".join(service(compose, "replicator")["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    config = yaml_load((COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["replicator"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"replicator:{port}"]
    assert jobs["replicator"].get("metrics_path", "/metrics") == "/metrics"


def test_stop_grace_is_longer_than_the_shutdown_bound(
    compose: dict[str, Any], settings: Settings
) -> None:
    grace = service(compose, "replicator")["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match.group(1)) > settings.shutdown_timeout_s


def test_the_replicator_container_is_locked_down(compose: dict[str, Any]) -> None:
    replicator = service(compose, "replicator")
    assert replicator["read_only"] is True
    assert replicator["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in replicator["security_opt"]


# ---- the monitoring files are mounted from the repository -----------------------------------


def test_prometheus_loads_the_projects_rules(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(compose, "prometheus")
    rules = [
        target
        for target, source in mounts.items()
        if source == ROOT / "monitoring" / "alerts.rules.yml"
    ]
    assert len(rules) == 1
    config_target = next(t for t, s in mounts.items() if s == COMPOSE_DIR / "prometheus.yml")
    command = flags(service(compose, "prometheus")["command"])
    assert command["config.file"] == config_target
    config = yaml_load((COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert any(Path(rules[0]).match(pattern) for pattern in config["rule_files"])


def test_compose_prometheus_config_and_rules_pass_promtool(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The compose Prometheus' config, with the rules where the container finds them."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed: `make setup` installs it")
        pytest.skip("promtool is not installed (make setup installs it)")
    mounts = bind_mounts(compose, "prometheus")
    text = (COMPOSE_DIR / "prometheus.yml").read_text(encoding="utf-8")
    for target, source in mounts.items():
        if source.suffix == ".yml" and source != COMPOSE_DIR / "prometheus.yml":
            local = tmp_path / target.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, local)
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/", f"{tmp_path}/etc/prometheus/"))
    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " rules found" in result.stdout  # the rules file was loaded and checked


def test_grafana_provisions_the_projects_dashboard(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(compose, "grafana")
    dashboards = [
        t for t, s in mounts.items() if s == ROOT / "monitoring" / "grafana-dashboard.json"
    ]
    assert len(dashboards) == 1
    provisioning = {s.name: t for t, s in mounts.items() if s.parent == COMPOSE_DIR}
    assert provisioning["grafana-datasources.yml"].startswith(
        "/etc/grafana/provisioning/datasources/"
    )
    assert provisioning["grafana-dashboards.yml"].startswith(
        "/etc/grafana/provisioning/dashboards/"
    )
    providers = yaml_load((COMPOSE_DIR / "grafana-dashboards.yml").read_text(encoding="utf-8"))
    paths = [p["options"]["path"] for p in providers["providers"]]
    assert any(Path(dashboards[0]).parent == Path(path) for path in paths)
    datasources = yaml_load((COMPOSE_DIR / "grafana-datasources.yml").read_text(encoding="utf-8"))[
        "datasources"
    ]
    url = urlsplit(datasources[0]["url"])
    assert datasources[0]["type"] == "prometheus"
    assert url.hostname == "prometheus"
    assert url.port in published(compose, "prometheus").values()


# ---- the image -------------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_entry_point_user_and_base() -> None:
    text = dockerfile()
    assert re.search(r'^ENTRYPOINT \["replicator"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    uid = re.search(r"^ARG UID=(\d+)$", text, re.M)
    assert uid is not None and int(uid.group(1)) >= 1000
    assert re.search(r"^USER \$\{UID\}:\$\{GID\}$", text, re.M)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1)), base.group(1)
    assert len(re.findall(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)) == 2  # multi-stage


def test_dockerfile_installs_the_lock_with_hashes() -> None:
    text = re.sub(r"\\\n\s*", " ", dockerfile())  # join continued lines
    installs = [line for line in text.splitlines() if "pip" in line and " -r " in line]
    runtime = [line for line in installs if "-r requirements.lock" in line]
    build = [line for line in installs if "-r requirements-build.lock" in line]
    assert runtime and build
    for line in runtime + build:
        assert "--require-hashes" in line and "--no-deps" in line, line
    assert all("--only-binary=:all:" in line for line in runtime)


def test_image_names_its_schemas_and_metrics_port() -> None:
    text = dockerfile()
    schemas = re.search(r"REPLICATOR_SCHEMAS_DIR=(\S+)", text)
    assert schemas is not None
    assert re.search(rf"^COPY schemas {re.escape(schemas.group(1))}$", text, re.M)
    assert (
        docs_gen.default_text("schemas_dir", Settings.model_fields["schemas_dir"]).find(
            schemas.group(1)
        )
        >= 0
    )
    port = re.search(r"^EXPOSE (\d+)$", text, re.M)
    assert port is not None
    assert int(port.group(1)) == Settings.model_fields["metrics_port"].default


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert lines[lines.index("*")] == "*"  # everything out, then an allowlist
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile(), re.M)
    for sources in copied:
        for source in shlex.split(sources):
            assert f"!{source.rstrip('/')}" in [ln.rstrip("/") for ln in lines], source


def lock_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_requirements_lock_matches_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = lock_pins(ROOT / "requirements.lock")
    for requirement in pyproject["project"]["dependencies"]:
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[([^\]]*)\])?(.*)$", requirement)
        assert match is not None
        name = match.group(1).lower().replace("_", "-")
        assert name in pins, f"{name} is missing from requirements.lock"
        spec = match.group(3).strip()
        if spec.startswith("=="):
            assert pins[name] == spec[2:], f"{name}: pyproject {spec}, lock {pins[name]}"
        # an extra's own requirements are locked too (the image installs with --no-deps)
        for extra in filter(None, (match.group(2) or "").split(",")):
            for needed in map(Requirement, importlib.metadata.requires(name) or []):
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}):
                    dep_name = needed.name.lower().replace("_", "-")
                    assert dep_name in pins, f"{dep_name} ({name}[{extra}]) is not locked"
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert text.count("==") == len(pins)
    assert text.count("--hash=sha256:") >= len(pins)  # every pin carries its hashes
    build = lock_pins(ROOT / "requirements-build.lock")
    assert {"setuptools", "wheel"} <= set(build)
