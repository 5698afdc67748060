"""Deployment files: Dockerfile, .dockerignore, Kubernetes manifests, compose stack.

No container engine or cluster runs here, so the files are checked offline: the Dockerfile is
parsed, the Kubernetes manifests are validated against the schemas that `kubernetes-validate`
ships (CRD kinds against a structural schema written here), the kustomize output is rendered with
`kubectl kustomize` where kubectl exists, and the configs inside are loaded by the real parsers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from exporter.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "workload-identity"
SHARDED = K8S / "overlays" / "sharded"
NAME = "intune-apple-token-exporter"
CONFIG_PATH = "/etc/intune-apple-token-exporter/config.yaml"
STATE = "/var/lib/intune-apple-token-exporter"  # --storage.path in the image and manifests
PROJECTED_TOKEN = "/var/run/secrets/azure/tokens/azure-identity-token"
# The newest schemas kubernetes-validate ships, and an older release still widely run.
K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.29")


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def build_args() -> dict[str, str]:
    args = {}
    for kw, rest in dockerfile_instructions():
        if kw == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for kw, rest in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def test_dockerfile_is_multi_stage_on_pinned_slim_python() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) >= 2
    image = build_args()["PYTHON_IMAGE"]
    # A full patch version and a slim variant, never a floating tag.
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim(-[a-z]+)?", image), image
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)


def test_dockerfile_runtime_stage() -> None:
    stage = final_stage(dockerfile_instructions())
    user = one(stage, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric user"
    assert int(uid) > 0, "non-root user"
    assert gid.isdigit()
    assert int(gid) > 0
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert json.loads(one(stage, "ENTRYPOINT")) == [NAME]
    assert NAME in pyproject["project"]["scripts"]
    assert json.loads(one(stage, "CMD")) == [
        f"--config.file={CONFIG_PATH}",
        f"--storage.path={STATE}",
    ]
    assert json.loads(one(stage, "VOLUME")) == [STATE]
    assert one(stage, "EXPOSE") == "9893"
    labels = one(stage, "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # Nothing in the image installs or calls curl/wget.
    assert not any(re.search(r"\b(curl|wget)\b", rest) for _, rest in dockerfile_instructions())


def healthcheck_command() -> list[str]:
    stage = final_stage(dockerfile_instructions())
    options, _, command = one(stage, "HEALTHCHECK").partition("CMD ")
    assert "--interval=" in options
    argv: list[str] = json.loads(command)
    return argv


def healthcheck_url() -> str:
    stage = final_stage(dockerfile_instructions())
    for kw, rest in stage:
        if kw == "ENV" and rest.startswith("HEALTHCHECK_URL="):
            return rest.partition("=")[2]
    raise AssertionError("no ENV HEALTHCHECK_URL")


def test_healthcheck_uses_python_on_healthy_endpoint() -> None:
    argv = healthcheck_command()
    assert argv[:2] == ["python", "-c"]
    assert healthcheck_url() == "http://127.0.0.1:9893/-/healthy"


@pytest.mark.parametrize(("status", "expected_rc"), [(200, 0), (503, 1)])
async def test_healthcheck_command_really_checks(status: int, expected_rc: int) -> None:
    """Run the HEALTHCHECK's Python against a local server answering 200, then 503."""

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(status=status, text="x")

    app = web.Application()
    app.router.add_get("/-/healthy", healthy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        argv = healthcheck_command()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv[1:],
            env={"HEALTHCHECK_URL": f"http://127.0.0.1:{port}/-/healthy"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rc = await proc.wait()
    finally:
        await runner.cleanup()
    assert rc == expected_rc


def test_dependencies_layer_before_source() -> None:
    instructions = dockerfile_instructions()
    build = instructions[: max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")]
    copies = [(i, rest) for i, (kw, rest) in enumerate(build) if kw == "COPY"]
    runs = [(i, rest) for i, (kw, rest) in enumerate(build) if kw == "RUN"]
    pyproject_copy = next(i for i, rest in copies if rest.split()[0] == "pyproject.toml")
    deps_run = next(i for i, rest in runs if "--requirement" in rest)
    source_copy = next(i for i, rest in copies if rest.split()[0].startswith("exporter"))
    assert pyproject_copy < deps_run < source_copy


def test_dependency_extraction_matches_pyproject(tmp_path: Path) -> None:
    """The RUN line that lists the dependencies really prints pyproject's dependencies."""
    run = next(rest for kw, rest in dockerfile_instructions() if kw == "RUN" and "tomllib" in rest)
    command = run.split("&&")[0].replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    argv = shlex.split(command.split(">")[0])
    assert argv[0] == "python"
    out = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert out.split() == pyproject["project"]["dependencies"]


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        regex = re.escape(pattern.strip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    sources = []
    for kw, rest in dockerfile_instructions():
        if kw != "COPY" or rest.startswith("--from"):
            continue
        *srcs, _dest = rest.split()
        sources += srcs
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} missing from the repository"
        assert not dockerignore_excludes(src.rstrip("/")), f"{src} is excluded by .dockerignore"
    for kept_out in (
        "tests/test_deploy.py",
        ".git/HEAD",
        "exporter/__pycache__/x.pyc",
        "deploy/kubernetes/base/deployment.yaml",
        ".mypy_cache/x",
        ".pytest_cache/x",
        "grafana/dashboards/x.json",
    ):
        assert dockerignore_excludes(kept_out), kept_out
    assert not dockerignore_excludes("exporter/web/config.py")


# --------------------------------------------------------------------------------------------
# Kubernetes


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_resources() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [doc for name in kustomization["resources"] for doc in load_docs(BASE / name)]
    return {doc["kind"]: doc for doc in docs}


# A structural subset of prometheus-operator's CRD schemas (monitoring.coreos.com/v1): the fields
# these manifests use, with unknown fields rejected so that a typo does not pass.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": _LABELS, "namespace": {"type": "string"}},
}
_DURATION = {
    "type": "string",
    "pattern": r"^((\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?|0)$",
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": _LABELS},
                    },
                    "namespaceSelector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "tlsConfig": {"type": "object"},
                                "basicAuth": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "limit": {"type": "integer"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [
                                            {"required": ["alert"]},
                                            {"required": ["record"]},
                                        ],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _LABELS,
                                            "annotations": _LABELS,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def validate_manifest(doc: dict[str, Any]) -> None:
    """Schema-validate one manifest: Kubernetes kinds strictly, CRD kinds structurally."""
    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def manifest_files() -> list[Path]:
    files = sorted(K8S.rglob("*.yaml"))
    return [
        f
        for f in files
        if f.name != "kustomization.yaml" and f.name != "config.yaml" and f.parent == BASE
    ]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_base_manifest_is_valid(path: Path) -> None:
    docs = load_docs(path)
    assert docs
    for doc in docs:
        validate_manifest(doc)


def test_schema_validation_catches_mistakes() -> None:
    """The validators used above do reject bad manifests (a test of the test)."""
    deployment = base_resources()["Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(broken)
    rule = json.loads(json.dumps(base_resources()["PrometheusRule"]))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "an hour"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(rule)


def test_kustomization_lists_existing_files_and_not_the_secret_example() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (BASE / name).is_file(), name
    assert "secret.example.yaml" not in kustomization["resources"]
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator["files"]:
            assert (BASE / name).is_file()
    kinds = set(base_resources())
    assert {
        "ServiceAccount",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"]


def test_secret_example_holds_placeholders_only() -> None:
    (secret,) = load_docs(BASE / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert "data" not in secret
    assert secret["stringData"]
    for value in secret["stringData"].values():
        assert value.startswith("REPLACE-"), "a real-looking value in the example Secret"
    deployment = base_resources()["Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": NAME, "defaultMode": 0o440} in [v.get("secret") for v in volumes]
    assert secret["metadata"]["name"] == NAME


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_is_hardened() -> None:
    deployment = base_resources()["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    c = container(deployment)
    dockerfile_user = one(final_stage(dockerfile_instructions()), "USER")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == (
        dockerfile_user
    )
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9893, "protocol": "TCP"}]
    resources = c["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]
    assert f"--config.file={CONFIG_PATH}" in c["args"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[CONFIG_PATH]["subPath"] == "config.yaml"
    # Read-only but for /tmp and the kept state (--storage.path).
    assert all(m.get("readOnly") for p, m in mounts.items() if p not in ("/tmp", STATE))


def test_service_and_servicemonitor_agree() -> None:
    resources = base_resources()
    service, monitor = resources["Service"], resources["ServiceMonitor"]
    deployment = resources["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert [p["port"] for p in service["spec"]["ports"]] == [9893]
    # prometheus-operator takes the job label from this Service label.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == NAME


def test_networkpolicy_allows_only_https_and_dns_out() -> None:
    policy = base_resources()["NetworkPolicy"]["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    assert all(set(rule) == {"ports"} for rule in policy["egress"])
    ingress = {(p["port"], p["protocol"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress == {(9893, "TCP")}
    deployment = base_resources()["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()


def check_exporter_config(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> dict[str, Any]:
    """Load a bundled config.yaml with the exporter's own parser, credential files stubbed."""
    raw = yaml.safe_load(path.read_text())
    originals: dict[str, str] = {}

    def stub_files(mapping: dict[str, Any], where: str) -> None:
        for key in ("client_secret_file", "federated_token_file"):
            if key in mapping:
                originals[f"{where}.{key}"] = mapping[key]
                stub = tmp_path / f"{where}-{key}"
                stub.write_text("placeholder-credential\n")
                mapping[key] = str(stub)

    stub_files(raw.get("defaults", {}), "defaults")
    for i, tenant in enumerate(raw["tenants"]):
        stub_files(tenant, f"tenants{i}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = parse_config(raw, str(path))
    assert len(config.tenants) >= 2
    assert set(config.collect) == {"ade", "ade_devices", "vpp", "apns"}
    return originals


def test_base_config_is_valid_and_reads_secrets_from_the_mounted_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = check_exporter_config(BASE / "config.yaml", tmp_path, monkeypatch, {})
    mounts = {
        m["name"]: m["mountPath"] for m in container(base_resources()["Deployment"])["volumeMounts"]
    }
    assert originals
    for path in originals.values():
        assert path.startswith(mounts["secrets"] + "/"), path


def test_overlay_config_uses_projected_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = check_exporter_config(
        OVERLAY / "config.yaml",
        tmp_path,
        monkeypatch,
        {"AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111"},
    )
    assert originals == {"defaults.federated_token_file": PROJECTED_TOKEN}


def test_overlay_patches_target_base_resources() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base"]
    base = base_resources()
    for patch in kustomization["patches"]:
        (doc,) = load_docs(OVERLAY / patch["path"])
        assert doc["kind"] in base
        assert doc["metadata"]["name"] == base[doc["kind"]]["metadata"]["name"]
    (sa,) = load_docs(OVERLAY / "serviceaccount.yaml")
    assert "azure.workload.identity/client-id" in sa["metadata"]["annotations"]


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with built-in kustomize) is not installed; raw files checked above")
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("path", [K8S, OVERLAY], ids=["base", "workload-identity"])
def test_kustomize_output_is_valid(path: Path) -> None:
    docs = kustomize(path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for doc in docs:
        validate_manifest(doc)
        assert doc["metadata"]["namespace"] == "monitoring"
    by_kind = {d["kind"]: d for d in docs}
    config_map = by_kind["ConfigMap"]
    volumes = by_kind["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": config_map["metadata"]["name"]} in [v.get("configMap") for v in volumes]
    source = (OVERLAY if path == OVERLAY else BASE) / "config.yaml"
    assert config_map["data"]["config.yaml"] == source.read_text()


def test_sharded_overlay_rendered() -> None:
    docs = kustomize(SHARDED)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "StatefulSet",
            "NetworkPolicy",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for doc in docs:
        validate_manifest(doc)
        assert doc["metadata"]["namespace"] == "monitoring"
    by_kind = {d["kind"]: d for d in docs}
    service, statefulset = by_kind["Service"], by_kind["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"  # headless: every pod is an endpoint
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    pod = statefulset["spec"]["template"]
    selector = by_kind["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    args = container["args"]
    # Both numbers change together: replicas and --total-shards.
    assert f"--total-shards={statefulset['spec']['replicas']}" in args
    assert "--shard.from-pod-name" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The flags parse, and the StatefulSet's pod names give every shard exactly once.
    from exporter.cli import build_parser, shard_from_args

    name = statefulset["metadata"]["name"]
    shards = set()
    for ordinal in range(statefulset["spec"]["replicas"]):
        parsed = build_parser().parse_args(args)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("POD_NAME", f"{name}-{ordinal}")
            shards.add(shard_from_args(parsed).index)
    assert shards == set(range(statefulset["spec"]["replicas"]))
    volumes = pod["spec"]["volumes"]
    assert {"name": by_kind["ConfigMap"]["metadata"]["name"]} in [
        v.get("configMap") for v in volumes
    ]
    # Hardened as the base Deployment is.
    base = base_resources()["Deployment"]["spec"]["template"]["spec"]
    assert pod["spec"]["securityContext"] == base["securityContext"]
    assert container["securityContext"] == base["containers"][0]["securityContext"]
    assert container["livenessProbe"] == base["containers"][0]["livenessProbe"]


def test_workload_identity_overlay_rendered() -> None:
    docs = {d["kind"]: d for d in kustomize(OVERLAY)}
    pod = docs["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    annotations = docs["ServiceAccount"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f-]{36}", annotations["azure.workload.identity/client-id"])
    # No client secret in this variant: the Secret volume and its mount are gone.
    assert all("secret" not in v for v in pod["spec"]["volumes"])
    mounts = [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]]
    assert "/etc/intune-apple-token-exporter/secrets" not in mounts
    config = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
    assert config["defaults"]["federated_token_file"] == PROJECTED_TOKEN


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_prometheusrule", ROOT / "scripts" / "gen_prometheusrule.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_in_sync_with_alerts_yaml() -> None:
    alerts = ROOT / "prometheus" / "alerts.yaml"
    if not alerts.exists():
        pytest.skip("prometheus/alerts.yaml does not exist yet")
    generator = load_generator()
    expected = generator.render(alerts.read_text(encoding="utf-8"))
    actual = (BASE / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert actual == expected, "run: python scripts/gen_prometheusrule.py"
    # Same rules, not only the same text shape.
    rule = yaml.safe_load(actual)
    assert rule["spec"]["groups"] == yaml.safe_load(alerts.read_text())["groups"]


def test_generator_detects_drift(tmp_path: Path) -> None:
    generator = load_generator()
    text = generator.render(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          up == 0\n"
    )
    doc = yaml.safe_load(text)
    assert doc["kind"] == "PrometheusRule"
    assert doc["spec"]["groups"][0]["rules"][0]["expr"] == "up == 0\n"
    assert "expr: |" in text  # PromQL stays readable
    validate_manifest(doc)
    with pytest.raises(ValueError, match="groups"):
        generator.render("rules: []\n")
    # --check fails on a stale file and leaves it alone.
    monkey_output = tmp_path / "prometheusrule.yaml"
    monkey_output.write_text("stale\n")
    generator.OUTPUT = monkey_output
    generator.ROOT = tmp_path.parent
    assert generator.main(["--check"]) == 1
    assert monkey_output.read_text() == "stale\n"
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0


# --------------------------------------------------------------------------------------------
# docker compose


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def test_compose_services_and_pinned_images() -> None:
    services = compose()["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, image
        assert tag not in ("", "latest"), f"{name}: image {image} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: tag {tag} is not a full version"
    exporter = services["exporter"]
    assert exporter["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert exporter["command"] == ["--demo", f"--storage.path={STATE}"]
    assert exporter["read_only"] is True
    assert exporter["user"] == one(final_stage(dockerfile_instructions()), "USER")
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), "the demo binds to loopback only"


def test_compose_mounts_exist() -> None:
    services = compose()["services"]
    mounts = [m for s in services.values() for m in bind_mounts(s)]
    expected_sources = {
        "./deploy/compose/prometheus.yml",
        "./prometheus/alerts.yaml",
        "./alertmanager/alertmanager.example.yaml",
        "./alertmanager/templates",
        "./grafana/provisioning",
        "./grafana/dashboards",
    }
    assert {source for source, _ in mounts} == expected_sources
    for source, _target in mounts:
        assert (ROOT / source).exists(), f"compose mounts {source}, which does not exist"
    assert any((ROOT / "alertmanager" / "templates").glob("*.tmpl"))
    assert any((ROOT / "grafana" / "dashboards").glob("*.json"))


def target_of(service: str, source: str) -> str:
    return dict(bind_mounts(compose()["services"][service]))[source]


def test_compose_prometheus_config(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs[NAME]["static_configs"][0]["targets"]
    assert targets == ["exporter:9893"]
    assert config["rule_files"] == [target_of("prometheus", "./prometheus/alerts.yaml")]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    prometheus = compose()["services"]["prometheus"]
    assert (
        "--config.file=" + target_of("prometheus", "./deploy/compose/prometheus.yml")
        in (prometheus["command"])
    )
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed; structure checked above")
    # promtool with the in-container rule path pointed at the repository's file.
    config["rule_files"] = [str(ROOT / "prometheus" / "alerts.yaml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(local)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_alertmanager_templates_are_mounted_where_the_config_reads_them() -> None:
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.example.yaml").read_text())
    mount = target_of("alertmanager", "./alertmanager/templates")
    alertmanager = compose()["services"]["alertmanager"]
    target = target_of("alertmanager", "./alertmanager/alertmanager.example.yaml")
    assert f"--config.file={target}" in alertmanager["command"]
    assert config["templates"]
    for pattern in config["templates"]:
        # Alertmanager resolves relative template paths against the config file's directory.
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(target), pattern))
        assert resolved.startswith(mount + "/"), pattern
        local = ROOT / "alertmanager" / "templates" / resolved.removeprefix(mount + "/")
        assert list(local.parent.glob(local.name)), f"{pattern} matches no bundled template"


def test_compose_grafana_provisioning_matches_mounts() -> None:
    dashboards_target = target_of("grafana", "./grafana/dashboards")
    assert target_of("grafana", "./grafana/provisioning") == "/etc/grafana/provisioning"
    providers = [
        provider
        for f in (ROOT / "grafana" / "provisioning" / "dashboards").glob("*.y*ml")
        for provider in yaml.safe_load(f.read_text())["providers"]
    ]
    assert [p["options"]["path"] for p in providers] == [dashboards_target]
    datasources = [
        ds
        for f in (ROOT / "grafana" / "provisioning" / "datasources").glob("*.y*ml")
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    assert [ds["url"] for ds in datasources if ds["type"] == "prometheus"] == [
        "http://prometheus:9090"
    ]
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home.startswith(dashboards_target + "/")
    assert (ROOT / "grafana" / "dashboards" / home.removeprefix(dashboards_target + "/")).is_file()


def _state_mount(pod_spec: dict[str, Any]) -> dict[str, Any]:
    container = pod_spec["containers"][0]
    assert f"--storage.path={STATE}" in container["args"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == STATE]
    assert not mount.get("readOnly")
    return mount


def test_kept_state_survives_what_each_deployment_promises() -> None:
    """Base: an emptyDir on disk (container restarts, OOM kills); sharded: a volume claim per
    shard (rescheduled pods); compose: a named volume."""
    base = base_resources()["Deployment"]["spec"]["template"]["spec"]
    mount = _state_mount(base)
    (volume,) = [v for v in base["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory"
    statefulset = {d["kind"]: d for d in kustomize(SHARDED)}["StatefulSet"]
    mount = _state_mount(statefulset["spec"]["template"]["spec"])
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert mount["name"] not in {
        v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]
    }
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    exporter = compose["services"]["exporter"]
    assert f"--storage.path={STATE}" in exporter["command"]
    (named,) = [v for v in exporter["volumes"] if v.endswith(f":{STATE}")]
    assert named.split(":")[0] in compose["volumes"]


AUTO_RELOAD = K8S / "overlays" / "auto-reload"


def test_auto_reload_overlay_rendered() -> None:
    """A fixed-name ConfigMap mounted as a directory (a subPath mount never sees updates), and
    the exporter told to check it."""
    docs = kustomize(AUTO_RELOAD)
    for doc in docs:
        validate_manifest(doc)
    by_kind = {d["kind"]: d for d in docs}
    config_map = by_kind["ConfigMap"]
    assert config_map["metadata"]["name"] == "intune-apple-token-exporter-config"  # no hash
    assert config_map["data"]["config.yaml"] == (BASE / "config.yaml").read_text()
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert "subPath" not in mount and mount["readOnly"] is True
    args = container["args"]
    assert f"--config.file={mount['mountPath']}/config.yaml" in args
    assert "--config.auto-reload-interval=30s" in args
    assert len([a for a in args if a.startswith("--config.file=")]) == 1
