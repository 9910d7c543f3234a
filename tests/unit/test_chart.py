"""The Helm chart (helm/replicator), linted and rendered offline with Helm v4 as a library
(helm-python-sdk): for the default values and for a production-like set
(helm/replicator/ci/production-values.yaml). The tests read the rendered manifests."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from replicator import __version__
from replicator.config import Settings, load_settings
from replicator.devtools import docs_gen
from tests.support.monitoring import promtool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "replicator"
RULES = ROOT / "monitoring" / "alerts.rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "replicator"
NAMESPACE = "snds"

SECRET_FIELDS = set(docs_gen.secret_fields())
SECRET_ENV = {docs_gen.env_name(name) for name in SECRET_FIELDS}
# Environment variables the replicator reads that are not settings.
NON_SETTING_ENV = {"REPLICATOR_SECRETS_DIR"}

Manifests = dict[tuple[str, str], dict[str, Any]]


def parse_manifests(rendered: dict[str, str]) -> Manifests:
    """Every rendered object by (kind, name)."""
    out: Manifests = {}
    for template, text in rendered.items():
        if template.endswith("NOTES.txt"):
            continue
        for document in re.split(r"(?m)^---\s*$", text):
            obj = helm.values_from_yaml(document)
            if not obj:
                continue
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in out, f"{key} rendered twice"
            out[key] = obj
    return out


def render(values: dict[str, Any] | None = None) -> Manifests:
    with helm.Chart.load(CHART) as chart:
        return parse_manifests(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def production_values() -> dict[str, Any]:
    return helm.values_from_yaml(PRODUCTION_VALUES.read_text(encoding="utf-8"))


def with_values(base: dict[str, Any] | None, **changes: Any) -> dict[str, Any]:
    """`base` with dotted keys changed: with_values(v, **{"keda.enabled": True})."""
    out: dict[str, Any] = json.loads(json.dumps(base or {}))
    for dotted, value in changes.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@pytest.fixture(scope="module")
def default() -> Manifests:
    return render()


@pytest.fixture(scope="module")
def production() -> Manifests:
    return render(production_values())


@pytest.fixture(params=["default", "production"])
def manifests(request: pytest.FixtureRequest) -> Manifests:
    fixture: Manifests = request.getfixturevalue(request.param)
    return fixture


@pytest.fixture(params=["default", "production"])
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], Manifests]:
    """(the values given, the manifests rendered from them)."""
    values = {} if request.param == "default" else production_values()
    fixture: Manifests = request.getfixturevalue(request.param)
    return values, fixture


def one(manifests: Manifests, kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in manifests.items() if k == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def kinds(manifests: Manifests) -> set[str]:
    return {kind for kind, _ in manifests}


def pod_spec(manifests: Manifests) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: Manifests) -> dict[str, Any]:
    containers = pod_spec(manifests)["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        merged: dict[str, Any] = chart.merge_values(values)
    return merged


# ---- lint and schema ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "production"])
def test_strict_lint_passes(which: str) -> None:
    values = production_values() if which == "production" else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_values_pass_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None
        chart.validate_schema(None)
        chart.validate_schema(production_values())


@pytest.mark.parametrize(
    "change",
    [
        {"config.s3_secret_key": "x"},
        {"config.azure_connection_string": "x"},
        {"config.kafka_sasl_password": "x"},
        {"config.no_such_setting": "x"},
        {"extraEnv": [{"name": "REPLICATOR_S3_SECRET_KEY", "value": "x"}]},
        {"extraEnv": [{"name": "REPLICATOR_KAFKA_PROPERTY_SSL_KEY_PASSWORD", "value": "x"}]},
        {
            "extraEnv": [
                {"name": "REPLICATOR_KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET", "value": "x"}
            ]
        },
        {"kafkaClient.mountPath": "relative"},
        {"securityContext.readOnlyRootFilesystem": False},
        {"securityContext.allowPrivilegeEscalation": True},
        {"podSecurityContext.runAsNonRoot": False},
        {"secrets.mode": "inline"},
    ],
)
def test_schema_refuses(change: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(with_values(None, **change))


def test_schema_accepts_a_secret_setting_by_reference_in_extra_env() -> None:
    ref = {"secretKeyRef": {"name": "s", "key": "k"}}
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(
            with_values(None, extraEnv=[{"name": "REPLICATOR_S3_SECRET_KEY", "valueFrom": ref}])
        )


def test_schema_config_block_is_generated_from_the_settings() -> None:
    current = (CHART / "values.schema.json").read_text(encoding="utf-8")
    assert docs_gen.render_chart_schema(current) == current, (
        "helm/replicator/values.schema.json is stale: run python -m replicator.devtools.docs_gen"
    )
    config = json.loads(current)["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(Settings.model_fields) - SECRET_FIELDS


def test_chart_app_version_is_the_replicator_version() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.metadata["appVersion"] == __version__


# ---- what is rendered -----------------------------------------------------------------


def test_default_objects(default: Manifests) -> None:
    assert kinds(default) == {
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
    assert len([k for k in default if k[0] == "ConfigMap"]) == 2  # settings + dashboard


def test_production_objects(production: Manifests) -> None:
    assert {"NetworkPolicy", "ScaledObject"} <= kinds(production)


def test_optional_objects_can_be_left_out() -> None:
    manifests = render(
        with_values(
            None,
            **{
                "serviceMonitor.enabled": False,
                "prometheusRule.enabled": False,
                "grafanaDashboard.enabled": False,
                "podDisruptionBudget.enabled": False,
                "serviceAccount.create": False,
            },
        )
    )
    assert kinds(manifests) == {"ConfigMap", "Deployment", "Service"}


def test_everything_is_namespaced_and_labelled(manifests: Manifests) -> None:
    for (kind, name), obj in manifests.items():
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE, (kind, name)
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, (kind, name)


# ---- security ---------------------------------------------------------------------------


def test_restricted_security_context(manifests: Manifests) -> None:
    pod = pod_spec(manifests)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = container(manifests)["securityContext"]
    assert csc["runAsNonRoot"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["privileged"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert "hostNetwork" not in pod and "hostPID" not in pod
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"emptyDir", "projected", "secret", "configMap"}


def test_the_pod_runs_as_the_image_user(manifests: Manifests) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    uid = re.search(r"^ARG UID=(\d+)$", dockerfile, re.M)
    assert uid is not None
    assert re.search(r"^USER \$\{UID\}:\$\{GID\}$", dockerfile, re.M)
    assert pod_spec(manifests)["securityContext"]["runAsUser"] == int(uid.group(1))
    assert container(manifests)["securityContext"]["runAsUser"] == int(uid.group(1))


def test_writable_tmp_only(manifests: Manifests) -> None:
    mounts = {m["mountPath"]: m for m in container(manifests)["volumeMounts"]}
    writable = [path for path, m in mounts.items() if not m.get("readOnly")]
    assert writable == ["/tmp"]


def test_resources(manifests: Manifests) -> None:
    resources = container(manifests)["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


# ---- probes, ports, shutdown, replicas ---------------------------------------------------


def test_probes_and_ports(case: tuple[dict[str, Any], Manifests]) -> None:
    values, manifests = case
    port = merged_values(values)["config"].get(
        "metrics_port", Settings.model_fields["metrics_port"].default
    )
    c = container(manifests)
    assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    assert c["args"] == ["run"]
    service = one(manifests, "Service")
    assert service["spec"]["ports"][0]["port"] == port
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["publishNotReadyAddresses"] is True
    settings_cm = settings_configmap(manifests)
    assert settings_cm["data"]["REPLICATOR_METRICS_PORT"] == str(port)


def test_termination_grace_is_longer_than_the_shutdown_bound(
    case: tuple[dict[str, Any], Manifests],
) -> None:
    values, manifests = case
    config = merged_values(values)["config"]
    shutdown = float(
        config.get("shutdown_timeout_s", Settings.model_fields["shutdown_timeout_s"].default)
    )
    grace = pod_spec(manifests)["terminationGracePeriodSeconds"]
    assert grace > shutdown
    assert float(settings_configmap(manifests)["data"]["REPLICATOR_SHUTDOWN_TIMEOUT_S"]) == shutdown


def test_termination_grace_follows_the_shutdown_bound() -> None:
    manifests = render(with_values(None, **{"config.shutdown_timeout_s": 100}))
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == 115


def test_a_termination_grace_too_short_is_refused() -> None:
    values = with_values(None, terminationGracePeriodSeconds=30)
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render(values)


def test_replicas_up_to_the_partition_count(case: tuple[dict[str, Any], Manifests]) -> None:
    values, manifests = case
    merged = merged_values(values)
    spec = one(manifests, "Deployment")["spec"]
    if merged["keda"]["enabled"]:
        assert "replicas" not in spec  # KEDA owns the count
        assert (
            one(manifests, "ScaledObject")["spec"]["maxReplicaCount"] <= (merged["topicPartitions"])
        )
    else:
        assert 1 <= spec["replicas"] <= merged["topicPartitions"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"replicaCount": 7, "topicPartitions": 6}, "replicaCount"),
        (
            {"keda.enabled": True, "keda.maxReplicaCount": 13, "topicPartitions": 12},
            "keda.maxReplicaCount",
        ),
        ({"secrets.s3.existingSecret": ""}, "secrets.s3.existingSecret"),
        ({"secrets.azure.existingSecret": ""}, "secrets.azure.existingSecret"),
        (
            {"config.kafka_sasl_mechanism": "SCRAM-SHA-512", "config.kafka_sasl_username": "u"},
            "secrets.kafkaSasl.existingSecret",
        ),
        (
            {"tls.kafkaCa.secretName": "ca", "config.kafka_ssl_ca_location": "/x"},
            "kafka_ssl_ca_location",
        ),
    ],
)
def test_inconsistent_values_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(with_values(None, **change))


def test_kafka_client_properties_from_a_secret() -> None:
    """The Secret of client properties is mounted whole (the properties file and the files it
    names) and its file is REPLICATOR_KAFKA_PROPERTIES_FILE; without it, neither."""
    values = with_values(None, **{"kafkaClient.existingSecret": "kafka-client"})
    manifests = render(values)
    env = {e["name"]: e.get("value") for e in container(manifests).get("env", [])}
    assert (
        env["REPLICATOR_KAFKA_PROPERTIES_FILE"] == "/etc/replicator/kafka-client/client.properties"
    )
    mounts = {m["name"]: m for m in container(manifests)["volumeMounts"]}
    assert mounts["kafka-client"] == {
        "name": "kafka-client",
        "mountPath": "/etc/replicator/kafka-client",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert volumes["kafka-client"]["secret"]["secretName"] == "kafka-client"
    no_file = render(with_values(values, **{"kafkaClient.propertiesKey": ""}))
    env_names = {e["name"] for e in container(no_file).get("env", [])}
    assert "REPLICATOR_KAFKA_PROPERTIES_FILE" not in env_names
    assert "kafka-client" in {m["name"] for m in container(no_file)["volumeMounts"]}
    none = render()
    assert "kafka-client" not in json.dumps(one(none, "Deployment"))


def test_one_store_needs_only_its_secret() -> None:
    values = with_values(None, **{"config.stores": ["azure"], "secrets.s3.existingSecret": ""})
    manifests = render(values)
    assert "REPLICATOR_S3_ACCESS_KEY" not in json.dumps(one(manifests, "Deployment"))


# ---- secrets: by reference only -----------------------------------------------------------


def settings_configmap(manifests: Manifests) -> dict[str, Any]:
    return manifests[("ConfigMap", RELEASE)]


def test_no_secret_object_and_no_secret_value(manifests: Manifests) -> None:
    assert "Secret" not in kinds(manifests)
    text = json.dumps(list(manifests.values()))
    for marker in ("AccountKey=", "SharedAccessSignature=", "sig=", "password="):
        assert marker not in text


def test_the_settings_configmap_holds_settings_only(manifests: Manifests) -> None:
    data = settings_configmap(manifests)["data"]
    for key in data:
        assert key.startswith("REPLICATOR_")
        if key in NON_SETTING_ENV:
            continue
        field = key.removeprefix("REPLICATOR_").lower()
        assert field in Settings.model_fields, key
        assert field not in SECRET_FIELDS, key


def test_no_secret_in_any_configmap(manifests: Manifests) -> None:
    for (kind, name), obj in manifests.items():
        if kind != "ConfigMap":
            continue
        for key, value in obj.get("data", {}).items():
            assert key not in SECRET_ENV, (name, key)
            assert "AccountKey=" not in value and "SharedAccessSignature=" not in value


def test_secrets_mounted_as_files_by_reference(production: Manifests) -> None:
    pod = pod_spec(production)
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    items = {
        (source["secret"]["name"], item["key"]): item["path"]
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert items == {
        ("replicator-scaleway", "access-key"): "REPLICATOR_S3_ACCESS_KEY",
        ("replicator-scaleway", "secret-key"): "REPLICATOR_S3_SECRET_KEY",
        ("replicator-scaleway", "sse-customer-key"): "REPLICATOR_S3_SSE_CUSTOMER_KEY",
        ("replicator-azure-sas", "connection-string"): "REPLICATOR_AZURE_CONNECTION_STRING",
        ("replicator-kafka-user", "password"): "REPLICATOR_KAFKA_SASL_PASSWORD",
        ("replicator-kafka-user", "username"): "REPLICATOR_KAFKA_SASL_USERNAME",
        ("replicator-schema-registry", "user-info"): "REPLICATOR_SCHEMA_REGISTRY_BASIC_AUTH",
    }
    # the bearer token is the other way to authenticate to the registry (one or the other)
    assert set(items.values()) | {"REPLICATOR_SCHEMA_REGISTRY_BEARER_TOKEN"} >= SECRET_ENV
    mount = next(m for m in container(production)["volumeMounts"] if m["name"] == "secrets")
    assert mount["readOnly"] is True
    data = settings_configmap(production)["data"]
    assert data["REPLICATOR_SECRETS_DIR"] == mount["mountPath"]
    assert "env" not in container(production)  # no secret in the environment either


def test_secrets_as_env_by_reference() -> None:
    values = with_values(
        production_values(),
        **{"secrets.mode": "env", "secrets.schemaRegistry.bearerTokenKey": "token"},
    )
    manifests = render(values)
    env = {e["name"]: e for e in container(manifests)["env"]}
    assert set(env) == SECRET_ENV | {"REPLICATOR_KAFKA_SASL_USERNAME"}
    for name, entry in env.items():
        assert "value" not in entry, name
        assert set(entry["valueFrom"]) == {"secretKeyRef"}, name
    assert env["REPLICATOR_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "replicator-scaleway",
        "key": "secret-key",
    }
    assert "REPLICATOR_SECRETS_DIR" not in settings_configmap(manifests)["data"]
    assert all(v["name"] != "secrets" for v in pod_spec(manifests)["volumes"])


def test_custom_ca_is_mounted_and_named(production: Manifests) -> None:
    data = settings_configmap(production)["data"]
    path = Path(data["REPLICATOR_KAFKA_SSL_CA_LOCATION"])
    mount = next(m for m in container(production)["volumeMounts"] if m["name"] == "ca-kafka")
    assert mount["readOnly"] is True and Path(mount["mountPath"]) == path.parent
    volume = next(v for v in pod_spec(production)["volumes"] if v["name"] == "ca-kafka")
    assert volume["secret"]["secretName"] == "kafka-cluster-ca-cert"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": path.name}]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in list(os.environ):
        if key.startswith("REPLICATOR_"):
            monkeypatch.delenv(key)
    yield monkeypatch


@pytest.mark.parametrize("which", ["default", "production"])
def test_the_pod_environment_is_a_valid_configuration(
    which: str, tmp_path: Path, clean_env: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """What a pod would see (the ConfigMap as environment, the Secrets as files named by the
    projected volume) loads as settings: the names the chart writes are the loader's."""
    manifests: Manifests = request.getfixturevalue(which)
    for key, value in settings_configmap(manifests)["data"].items():
        clean_env.setenv(key, value)
    volume = next(v for v in pod_spec(manifests)["volumes"] if v["name"] == "secrets")
    for source in volume["projected"]["sources"]:
        for item in source["secret"]["items"]:
            value = f"value-of-{item['key']}"
            if item["path"] == "REPLICATOR_S3_SSE_CUSTOMER_KEY":  # must be base64 of 32 bytes
                value = base64.b64encode(value.encode().ljust(32, b"-")).decode()
            if item["path"] == "REPLICATOR_AZURE_CONNECTION_STRING":  # must be well formed
                value = f"AccountName=acct;AccountKey={base64.b64encode(value.encode()).decode()}"
            if item["path"] == "REPLICATOR_SCHEMA_REGISTRY_BASIC_AUTH":  # 'user:password'
                value = f"user:{value}"
            (tmp_path / item["path"]).write_text(value + "\n")
    clean_env.setenv("REPLICATOR_SECRETS_DIR", str(tmp_path))
    for key in ("REPLICATOR_KAFKA_SSL_CA_LOCATION",):
        clean_env.delenv(key, raising=False)  # a mounted path that does not exist here
    settings = load_settings()
    assert settings.s3_secret_key is not None
    assert settings.s3_secret_key.get_secret_value() == "value-of-secret-key"
    assert settings.azure_connection_string is not None
    if which == "production":
        assert settings.kafka_sasl_username == "value-of-username"
        assert settings.kafka_security_protocol == "SASL_SSL"


# ---- monitoring: the project's own rules and dashboard --------------------------------------


def test_chart_copies_of_the_monitoring_files_are_identical() -> None:
    for source in (RULES, DASHBOARD):
        copy = CHART / "files" / source.name
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: "
            "run `make sync-chart-files`"
        )


def rules_for_job(job: str) -> str:
    return RULES.read_text(encoding="utf-8").replace('job="replicator"', f"job={json.dumps(job)}")


def rendered_rules(manifests: Manifests) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "PrometheusRule")["spec"]
    return spec


def test_prometheus_rule_is_the_rules_file_with_the_release_job(manifests: Manifests) -> None:
    assert 'job="replicator"' in RULES.read_text(encoding="utf-8")
    expected = helm.values_from_yaml(rules_for_job(f"{NAMESPACE}/{RELEASE}"))
    assert rendered_rules(manifests) == expected
    assert rendered_rules(manifests)["groups"], "no rule group"


MARK = re.compile(r"^(.*[^0-9.])([0-9.]+[smhdwy]?)([^0-9]*#\s*chart:\s*(\w+)\s*)$")


def marked_values() -> list[tuple[str, str]]:
    """(value name, number in the file) of every `# chart: <name>` mark of the rules file."""
    out = []
    for line in RULES.read_text(encoding="utf-8").splitlines():
        if re.search(r"#\s*chart:\s*\w+\s*$", line):  # as the template finds them
            match = MARK.match(line)
            assert match, f"a mark without a number before it: {line!r}"
            out.append((match.group(4), match.group(2)))
    return out


def test_every_threshold_of_the_rules_is_a_chart_value_with_the_files_default() -> None:
    defaults = merged_values({})["prometheusRule"]["thresholds"]
    marks = marked_values()
    assert {name for name, _ in marks} == set(defaults)
    for name, number in marks:
        assert str(defaults[name]) == number, (name, defaults[name], number)
    # every `for:` and every comparison with a number is marked (`> 0`, "at all", is a
    # condition, not a threshold)
    for line in RULES.read_text(encoding="utf-8").splitlines():
        if re.match(r"\s*for:", line) or re.search(r"(>|<|>=|<=) (?!0\s*$)[0-9.]+\s*$", line):
            assert "# chart:" in line, f"a threshold that is not a chart value: {line.strip()}"


def changed_thresholds() -> dict[str, Any]:
    """Every threshold of the chart changed: durations to 7m, 8m..., numbers + 11."""
    out: dict[str, Any] = {}
    for i, (name, value) in enumerate(
        sorted(merged_values({})["prometheusRule"]["thresholds"].items())
    ):
        out[name] = f"{7 + i}m" if isinstance(value, str) else value + 11
    return out


def test_thresholds_given_as_values_reach_the_rules_and_nothing_else_changes(
    tmp_path: Path,
) -> None:
    thresholds = changed_thresholds()
    manifests = render(with_values(None, **{"prometheusRule.thresholds": thresholds}))
    rendered = json.dumps(rendered_rules(manifests), indent=1)
    rules = tmp_path / "rules.yml"
    rules.write_text(rendered)
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    # the same file with the numbers replaced by hand is what the chart rendered
    by_hand = []
    for line in rules_for_job(f"{NAMESPACE}/{RELEASE}").splitlines():
        match = MARK.match(line)
        by_hand.append(
            f"{match.group(1)}{thresholds[match.group(4)]}{match.group(3)}" if match else line
        )
    assert rendered_rules(manifests) == helm.values_from_yaml("\n".join(by_hand))
    rules_rendered = rendered_rules(manifests)["groups"][0]["rules"]
    exprs = "\n".join(r["expr"] for r in rules_rendered)
    durations = {r.get("for") for r in rules_rendered}
    for name, value in thresholds.items():
        if name.endswith("For"):
            assert value in durations, name
        else:
            assert re.search(rf"[^0-9.]{value}[^0-9]*# chart: {name}\n", exprs), name


def test_a_mark_the_chart_does_not_know_is_refused(tmp_path: Path) -> None:
    chart = tmp_path / "replicator"
    shutil.copytree(CHART, chart)
    rules = chart / "files" / "alerts.rules.yml"
    text = rules.read_text(encoding="utf-8")
    assert "# chart: storeDownFor\n" in text
    rules.write_text(text.replace("# chart: storeDownFor\n", "# chart: storeDownForever\n"))
    with helm.Chart.load(chart) as copy, pytest.raises(helm.HelmError) as caught:
        copy.render(None, name=RELEASE, namespace=NAMESPACE)
    assert "prometheusRule.thresholds.storeDownForever" in str(caught.value)


def job_of(manifests: Manifests) -> str:
    monitor = one(manifests, "ServiceMonitor")
    relabel = monitor["spec"]["endpoints"][0]["relabelings"]
    assert [r for r in relabel if r["targetLabel"] == "job"] == [
        {"action": "replace", "targetLabel": "job", "replacement": relabel[0]["replacement"]}
    ]
    job: str = relabel[0]["replacement"]
    return job


@pytest.mark.parametrize(
    ("name", "namespace", "values", "job"),
    [
        (RELEASE, NAMESPACE, {}, "snds/replicator"),
        (RELEASE, "snds-test", {}, "snds-test/replicator"),
        ("blue", NAMESPACE, {}, "snds/blue-replicator"),
        (RELEASE, NAMESPACE, {"serviceMonitor.job": "replicator"}, "replicator"),
    ],
)
def test_each_release_has_its_own_job_in_the_scrape_the_rules_and_keda(
    name: str, namespace: str, values: dict[str, Any], job: str
) -> None:
    with helm.Chart.load(CHART) as chart:
        manifests = parse_manifests(
            chart.render(with_values(production_values(), **values), name=name, namespace=namespace)
        )
    assert job_of(manifests) == job
    selector = f"job={json.dumps(job)}"
    up_rule = next(
        r
        for r in rendered_rules(manifests)["groups"][0]["rules"]
        if r.get("alert") == "ReplicatorNoReplicaUp"
    )
    assert up_rule["expr"].count(f"up{{{selector}}}") == 2
    assert 'job="replicator"' not in json.dumps(rendered_rules(manifests)) or job == "replicator"
    query = one(manifests, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    assert query.count(selector) == 2


def test_dashboard_configmap_is_the_dashboard(manifests: Manifests) -> None:
    dashboard = manifests[("ConfigMap", f"{RELEASE}-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["replicator.json"] == DASHBOARD.read_text(encoding="utf-8")


def test_the_dashboard_links_to_the_runbook_url_given() -> None:
    url = "https://git.example.org/snds/replicator/-/blob/main/docs/runbook.md"
    manifests = render(with_values(None, **{"grafanaDashboard.runbookUrl": url}))
    data = json.loads(manifests[("ConfigMap", f"{RELEASE}-dashboard")]["data"]["replicator.json"])
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["runbook"]["query"] == url
    original = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    original["templating"]["list"] = data["templating"]["list"]
    assert data == original  # nothing else changed


def test_service_monitor_scrapes_the_metrics_port(manifests: Manifests) -> None:
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = one(manifests, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert "jobLabel" not in monitor["spec"]  # the job is the release's (job_of)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_selectors_match_the_pods(manifests: Manifests) -> None:
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one(manifests, "Deployment")["spec"]["selector"]["matchLabels"],
        one(manifests, "Service")["spec"]["selector"],
        one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    if "NetworkPolicy" in kinds(manifests):
        selectors.append(one(manifests, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    for selector in selectors:
        assert selector.items() <= pod_labels.items()


def test_network_policy(production: Manifests) -> None:
    policy = one(production, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["metrics"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 9094, 443}


def test_keda_scales_the_deployment_on_store_lag(production: Manifests) -> None:
    scaled = one(production, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert (
        scaled["spec"]["scaleTargetRef"]["name"]
        == one(production, "Deployment")["metadata"]["name"]
    )
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    metric = "replicator_store_lag_records"
    assert metric in trigger["metadata"]["query"]
    assert f'"{metric}"' in (ROOT / "replicator" / "telemetry" / "metrics.py").read_text(
        encoding="utf-8"
    )
    assert f'job="{NAMESPACE}/{RELEASE}"' in trigger["metadata"]["query"]


KEDA_CASES = [
    # (store -> (up per replica, lag per partition), the value KEDA reads)
    ("both stores up: the worst one", {"s3": ([1, 1], [10, 20]), "azure": ([1, 1], [5, 5])}, 30),
    (
        "azure down with a large lag: only s3 counts",
        {"s3": ([1, 1], [10, 20]), "azure": ([0, 0], [900000, 900000])},
        30,
    ),
    (
        "azure down for one replica only: a replica still writes it, not up",
        {"s3": ([1, 1], [1, 2]), "azure": ([1, 0], [500, 500])},
        3,
    ),
    (
        "every store down: nothing (KEDA reads 0)",
        {"s3": ([0, 0], [7, 7]), "azure": ([0, 0], [9, 9])},
        None,
    ),
]


def test_keda_does_not_scale_out_for_a_store_that_is_down(
    production: Manifests, tmp_path: Path
) -> None:
    """The rendered trigger query, evaluated by promtool over series as the replicas export
    them (two replicas, each exporting every partition's lag)."""
    query = one(production, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    job = f"{NAMESPACE}/{RELEASE}"
    (tmp_path / "keda.rules.yml").write_text(
        json.dumps(
            {"groups": [{"name": "keda", "rules": [{"record": "keda:query", "expr": query}]}]}
        )
    )
    tests = []
    for what, stores, expected in KEDA_CASES:
        series = []
        for store, (ups, lags) in stores.items():
            for replica, up in enumerate(ups):
                labels = f'job="{job}", instance="r{replica}", store="{store}"'
                series.append({"series": f"replicator_store_up{{{labels}}}", "values": f"{up}x5"})
                for partition, lag in enumerate(lags):
                    series.append(
                        {
                            "series": f'replicator_store_lag_records{{{labels}, topic="t", partition="{partition}"}}',
                            "values": f"{lag}x5",
                        }
                    )
        exp = [] if expected is None else [{"labels": "keda:query", "value": expected}]
        tests.append(
            {
                "name": what,
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [{"expr": "keda:query", "eval_time": "2m", "exp_samples": exp}],
            }
        )
    (tmp_path / "keda.test.yml").write_text(
        json.dumps({"rule_files": ["keda.rules.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool("test", "rules", "keda.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_reference(default: Manifests, production: Manifests) -> None:
    assert container(default)["image"] == f"replicator:{__version__}"
    production_image = container(production)["image"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", production_image)
