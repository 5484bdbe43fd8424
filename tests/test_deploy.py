"""The deployment files fit together: Kubernetes manifests (structure, GPU, probes, stickiness, the
autoscaler's metric chain), the compose file and its TLS proxy, and the Dockerfile. Docker and a cluster
are not available here, so this checks what can be checked without them; the metric names the
autoscaler uses are checked against a real server's metrics in test_server.py."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT

yaml = pytest.importorskip("yaml")

DEPLOY = ROOT / "deploy"


def load_manifests() -> dict[str, dict]:
    """kind → manifest, over every document of deploy/k8s/*.yaml (one of each kind)."""
    manifests = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= document.keys(), path
            assert document["kind"] not in manifests, f"two {document['kind']} manifests"
            manifests[document["kind"]] = document
    return manifests


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    return load_manifests()


def server_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def adapter_rule(k8s) -> dict:
    (rule,) = yaml.safe_load(k8s["ConfigMap"]["data"]["config.yaml"])["rules"]
    return rule


def test_the_manifests_are_the_expected_kinds(k8s):
    assert set(k8s) == {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "ConfigMap"}


def test_deployment_requests_a_gpu_and_probes_triton_s_health(k8s):
    deployment = k8s["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = server_container(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/models/animate/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_deployment_mounts_what_its_arguments_name(k8s):
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    container = server_container(k8s["Deployment"])
    args = dict(zip(container["args"][::2], container["args"][1::2]))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(mounts) == set(volumes)
    assert args["--token-file"].startswith(mounts["token"] + "/")
    assert volumes["token"]["secret"]["secretName"] == "avatarify-token"
    assert args["--checkpoint"].startswith(mounts["checkpoints"] + "/")
    assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    from avatarify.server import build_parser

    build_parser().parse_args(container["args"])  # the server accepts them


def test_service_and_ingress_keep_each_client_on_one_pod(k8s):
    service, ingress = k8s["Service"], k8s["Ingress"]
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "grpc" and port["name"] == "grpc"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"]  # per-request balancing made sticky
    assert ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": service["metadata"]["name"], "port": {"name": "grpc"}}


def test_autoscaler_scales_the_deployment_on_the_adapter_s_queue_time_metric(k8s):
    hpa = k8s["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", k8s["Deployment"]["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    rule = adapter_rule(k8s)
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert 'model="animate"' in rule["metricsQuery"]


def adapter_metric_names() -> set[str]:
    """Triton metric names the autoscaling rule reads (test_server.py checks a real server has them)."""
    rule = adapter_rule(load_manifests())
    return set(re.findall(r"\b(nv_[a-z_]+)\{", rule["metricsQuery"]))


def test_compose_runs_the_server_on_a_gpu_behind_a_tls_proxy():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    server, proxy = compose["services"]["server"], compose["services"]["proxy"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert server["build"]["dockerfile"] == "deploy/Dockerfile" and server["shm_size"]
    assert "avatarify_token" in server["secrets"] and "avatarify_token" in compose["secrets"]
    args = dict(zip(server["command"][::2], server["command"][1::2]))
    assert args["--token-file"] == "/run/secrets/avatarify_token"
    assert not any(str(p).endswith(":8001") for p in server.get("ports", []))  # gRPC only through the proxy
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "ssl_certificate" in nginx and "grpc_pass grpc://server:8001;" in nginx
    assert "client_max_body_size" in nginx
    mounted = {v.split(":")[0] for v in proxy["volumes"]}
    assert "./nginx.conf" in mounted


def test_dockerfile_installs_the_server_requirements_and_copies_its_code():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", dockerfile, re.MULTILINE)  # glibc >= 2.35
    assert "pip install -r requirements-server.txt" in dockerfile
    copied = set(re.findall(r"^COPY (\S+)/ ", dockerfile, re.MULTILINE))
    assert copied == {"avatarify", "models"}  # all the server imports (it never imports export/ or bench/)
    assert 'ENTRYPOINT ["python", "-m", "avatarify.server"]' in dockerfile
    assert "USER avatarify" in dockerfile


def test_the_server_imports_nothing_outside_what_the_image_copies():
    import subprocess
    import sys

    code = ("import sys, avatarify.server, avatarify.runners, models.fomm.checkpoint; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'export', 'bench', 'tests'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
