"""deploy/kubernetes/: every manifest is valid Kubernetes and agrees with the server's defaults.

Validation is offline and strict (unknown fields are errors) against the Kubernetes JSON
schemas shipped by `kubernetes-validate`; no cluster. The agreement checks read each fact from
its one home (the server's argument parser, ListenConfig, the proto's service name), so a
changed default or a renamed flag fails here instead of in a cluster.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pegasus_gsg.server.__main__ import build_parser
from pegasus_gsg.server.app import ListenConfig
from pegasus_gsg.server.settings import ServingConfig

from pegasus_gsg.serving.protos import SERVICE_NAME

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest version the manifests target (native gRPC probes are GA since 1.27) and the
newest whose schemas kubernetes-validate 1.37 ships."""
KUSTOMIZE_FILES = {"kustomization.yaml", "deployment-patch.yaml"}


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name not in KUSTOMIZE_FILES)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, over every file."""
    found = {}
    for path in manifest_files():
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def validate(doc: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """The `add` / `replace` operations of RFC 6902 (what the TLS overlay uses)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = op["path"].lstrip("/").split("/")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace") and isinstance(node, dict):
            assert op["op"] == "add" or last in node, f"replace of missing {op['path']}"
            node[last] = op["value"]
        else:
            raise AssertionError(f"unsupported patch operation {op}")
    return doc


def tls_deployment() -> dict[str, Any]:
    base = resources()[("Deployment", "pegasus-gsg")]
    return apply_json_patch(
        base, yaml.safe_load((DEPLOY / "tls" / "deployment-patch.yaml").read_text())
    )


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path):
    docs = documents(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        validate(doc)


def test_tls_overlay_gives_a_valid_deployment():
    validate(tls_deployment())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessProbes={}),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
            containerPort="grpc"
        ),
    ],
    ids=["unknown-field", "missing-required", "wrong-type"],
)
def test_validation_rejects_a_broken_deployment(mutate):
    broken = copy.deepcopy(resources()[("Deployment", "pegasus-gsg")])
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        str(p.relative_to(DEPLOY)) for p in manifest_files()
    )
    overlay = yaml.safe_load((DEPLOY / "tls" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    assert [p["path"] for p in overlay["patches"]] == ["deployment-patch.yaml"]


def _server(deployment: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The server container and its arguments as the server's own parser reads them."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "pegasus_gsg.server"]
    return container, build_parser().parse_args(container["args"])


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize("variant", ["plaintext", "tls"])
def test_deployment_agrees_with_the_server(variant):
    found = resources()
    deployment = tls_deployment() if variant == "tls" else found[("Deployment", "pegasus-gsg")]
    pod = deployment["spec"]["template"]["spec"]
    container, args = _server(deployment)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    # port: the server's default (no --port given) is what the pod and probes expose
    assert "--port" not in " ".join(container["args"])
    assert args.port == ListenConfig().port == _port(container, "grpc")
    assert args.host == "0.0.0.0"  # the default 127.0.0.1 is unreachable from the kubelet
    assert args.metrics_port == _port(container, "metrics")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)

    # probes: the standard health service, on the server's port, by its service names
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if variant == "plaintext":
            assert probe["grpc"]["port"] == args.port
            assert probe["grpc"].get("service", "") in ("", SERVICE_NAME)
        else:
            command = probe["exec"]["command"]
            assert command[:3] == ["python", "-m", "pegasus_gsg.server.healthcheck"]
            target = command[command.index("--target") + 1]
            assert target == f"localhost:{args.port}"
            if "--service" in command:
                assert command[command.index("--service") + 1] == SERVICE_NAME
            ca = Path(command[command.index("--tls-ca") + 1])
            assert ca.parent == Path(args.tls_cert).parent  # the TLS Secret's mount
    assert (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        >= 120
    ), "model load gets at least 2 minutes"

    # drain: SIGKILL must not cut the server's own shutdown short (server/app.py shutdown:
    # drain delay, then up to --grace for in-flight RPCs, then up to --grace for the worker)
    drain = args.drain_delay + 2 * args.grace
    assert pod["terminationGracePeriodSeconds"] > drain, (
        pod["terminationGracePeriodSeconds"],
        drain,
    )

    # one torch thread per CPU the pod may use (the default would follow the node's CPUs)
    assert args.torch_threads == int(container["resources"]["limits"]["cpu"])

    # files: model read-only from the PVC, auth token (and TLS) from Secrets, writable /tmp
    assert mounts[str(args.model)]["readOnly"] is True
    model_volume = volumes[mounts[str(args.model)]["name"]]
    assert model_volume["persistentVolumeClaim"] == {
        "claimName": found[("PersistentVolumeClaim", "pegasus-gsg-model")]["metadata"]["name"],
        "readOnly": True,
    }
    secret_files = [args.auth_token_file] + (
        [args.tls_cert, args.tls_key] if variant == "tls" else []
    )
    for path in secret_files:
        mount = mounts[str(Path(path).parent)]
        assert mount["readOnly"] is True and "secret" in volumes[mount["name"]], path
    assert (args.tls_cert is not None) == (variant == "tls")
    for writable in ("/tmp", container_env(container)["XDG_CACHE_HOME"]):
        assert "emptyDir" in volumes[mounts[writable]["name"]], writable

    # hardening
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert (
        pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    )


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_services_hpa_and_pdb_select_the_deployment():
    found = resources()
    deployment = found[("Deployment", "pegasus-gsg")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container, args = _server(deployment)
    port_names = {p["name"] for p in container["ports"]}
    services = [doc for (kind, _), doc in found.items() if kind == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"pegasus-gsg", "pegasus-gsg-headless"}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        grpc_port = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc_port and grpc_port[0]["port"] == args.port
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert found[("Service", "pegasus-gsg-headless")]["spec"]["clusterIP"] == "None"

    pdb = found[("PodDisruptionBudget", "pegasus-gsg")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = found[("HorizontalPodAutoscaler", "pegasus-gsg")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (
        hpa["spec"]["minReplicas"] >= 2
        and hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    )
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    queue = metrics["Pods"]["pods"]
    assert queue["metric"]["name"] == "pegasus_queue_depth"
    # scale out once a full batch waits per pod: half the server's default batch size
    assert float(queue["target"]["averageValue"]) == ServingConfig().max_batch_size / 2


def test_queue_metric_and_adapter_rule_name_what_the_server_exports():
    """The HPA's metric is a gauge the server exports, and the README's adapter rule serves it."""
    from pegasus_gsg.server.metrics import ServerMetrics

    exported = {metric.name for metric in ServerMetrics().registry.collect()}
    assert "pegasus_queue_depth" in exported
    readme = (DEPLOY / "README.md").read_text()
    rule = re.search(r"```yaml\n(rules:.*?)```", readme, re.DOTALL)
    assert rule, "README.md has no prometheus-adapter `rules:` block"
    (adapter_rule,) = yaml.safe_load(rule.group(1))["rules"]
    assert "pegasus_queue_depth" in adapter_rule["seriesQuery"]
    assert adapter_rule["name"]["as"] == "pegasus_queue_depth"
