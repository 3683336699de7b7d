"""k8s/ as a tenant's task would meet it: the tasks' own namespace under Pod Security
`restricted`, task pods (as the dispatcher writes their Jobs) that pass it, NetworkPolicies
that leave a task pod only the gateway's port, DNS and the internet, and services that reach
NATS only as the user deploy/nats-users.conf defines, over TLS in production."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from taskengine_contracts.events import Resources
from taskengine_core.dialects.drove.submission import create_operation
from taskengine_dispatcher.executors import kube_containers, kube_jobs

from tests.deploy.files import ROOT
from tests.deploy.pod_security import restricted_violations
from tests.deploy.test_kubernetes import (
    LAYOUTS,
    SECRET,
    SERVICES_NAMESPACE,
    TASKS_NAMESPACE,
    deployments,
    of_kind,
    pod_specs,
)

PRODUCTION = "overlays/production"
USERS_CONF = ROOT / "deploy" / "nats-users.conf"
GATEWAY_PORT = 8080
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def pod_security(namespace: dict[str, Any]) -> dict[str, str]:
    prefix = "pod-security.kubernetes.io/"
    labels = namespace["metadata"].get("labels", {})
    return {k.removeprefix(prefix): v for k, v in labels.items() if k.startswith(prefix)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_tasks_namespace_enforces_pod_security_restricted(layout):
    namespaces = of_kind(layout, "Namespace")
    assert pod_security(namespaces[TASKS_NAMESPACE]) == {
        level: value
        for mode in ("enforce", "warn", "audit")
        for level, value in ((mode, "restricted"), (f"{mode}-version", "latest"))
    }


def test_the_services_namespace_enforces_pod_security_restricted_in_production():
    namespaces = of_kind(PRODUCTION, "Namespace")
    assert set(namespaces) == {SERVICES_NAMESPACE, TASKS_NAMESPACE}
    assert pod_security(namespaces[SERVICES_NAMESPACE])["enforce"] == "restricted"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_service_pod_passes_pod_security_restricted(layout):
    for name, spec in pod_specs(layout).items():
        assert restricted_violations(spec) == [], name
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


def work_task_job() -> dict[str, Any]:
    return kube_jobs.manifest(
        name="te-1-1",
        job_id=1,
        attempt=1,
        image="registry.example.com/taskengine:0.1.0",
        env={"TASKENGINE_JOB_ID": "1"},
        requirements=Resources(cpu="1", memory="1Gi"),
        memory=None,
        secret="creds",
        secret_keys=["AWS_ACCESS_KEY_ID"],
        timeout=60,
        ttl=600,
    )


def docker_task_job(**spec: Any) -> dict[str, Any]:
    body = {
        "sourceAppName": "APP",
        "taskId": "T1",
        "executable": {"type": "DOCKER", "url": "docker.io/library/busybox:1"},
        "resources": [{"type": "CPU", "count": 1}, {"type": "MEMORY", "sizeInMB": 128}],
        **spec,
    }
    job = create_operation({"type": "CREATE", "spec": body}).submitted(2, "acme", NOW)
    return kube_containers.manifest(
        name="te-2-1", job_id=job.job_id, run=job.run, attempt=1, timeout=60, ttl=600
    )


def test_the_dispatchers_task_pods_pass_pod_security_restricted():
    """Whatever image a client names runs as uid 10001, unprivileged: the tasks' namespace
    admits the Jobs the dispatcher writes, for work tasks and DOCKER tasks alike."""
    for job in (work_task_job(), docker_task_job()):
        pod = job["spec"]["template"]["spec"]
        assert restricted_violations(pod) == [], job["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no addresses of the services' Services


def test_a_host_path_volume_is_what_restricted_refuses_and_it_is_read_only():
    """Host paths (TASKENGINE_KUBE_HOST_PATHS) need the tasks' namespace at `privileged`
    (k8s/README.md); even then they are mounted read-only."""
    volume = {"pathInContainer": "/data", "pathOnHost": "/mnt/shared/acme", "mode": "READ_ONLY"}
    pod = docker_task_job(volumes=[volume])["spec"]["template"]["spec"]
    assert restricted_violations(pod) == ["hostPath volume volume-0"]
    assert all(m["readOnly"] for m in pod["containers"][0]["volumeMounts"])


# --- NetworkPolicies: where a task pod may connect ---------------------------------------------

NODE_IP, CLUSTER_IP = "10.0.0.4", "10.0.3.7"


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    assert not selector.get("matchExpressions"), "extend the evaluator for expressions"
    return True


def _peer_allows(peer: dict[str, Any], destination: dict[str, Any]) -> bool:
    if "ipBlock" in peer:
        if "ip" not in destination:
            return False
        ip = ipaddress.ip_address(destination["ip"])
        block = peer["ipBlock"]
        net = ipaddress.ip_network(block["cidr"])
        if ip.version != net.version or ip not in net:
            return False
        return not any(
            ip.version == (n := ipaddress.ip_network(e)).version and ip in n
            for e in block.get("except", [])
        )
    if "pod" not in destination:
        return False
    namespace_labels = {"kubernetes.io/metadata.name": destination["namespace"]}
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif destination["namespace"] != destination["from"]:
        return False  # a podSelector alone: the policy's own namespace
    return _matches(peer.get("podSelector"), destination["pod"])


def egress_allowed(policies: list[dict[str, Any]], source: dict, destination: dict) -> bool:
    """Whether NetworkPolicy semantics let a pod (labels `source`, in `destination['from']`)
    connect to `destination` (a pod with labels and namespace, or an IP) on its port."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == destination["from"]
        and "Egress" in p["spec"]["policyTypes"]
        and _matches(p["spec"]["podSelector"], source)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to")
            if peers and not any(_peer_allows(peer, destination) for peer in peers):
                continue
            ports = rule.get("ports")
            if ports and not any(
                p.get("protocol", "TCP") == destination["protocol"]
                and p["port"] == destination["port"]
                for p in ports
            ):
                continue
            return True
    return False


def gateway_pod_labels() -> dict[str, str]:
    return deployments(PRODUCTION)["gateway"]["spec"]["template"]["metadata"]["labels"]


def in_cluster(namespace: str, labels: dict[str, str], port: int, protocol: str = "TCP") -> dict:
    return {
        "from": TASKS_NAMESPACE,
        "namespace": namespace,
        "pod": labels,
        "port": port,
        "protocol": protocol,
    }


def outside(ip: str, port: int) -> dict:
    return {"from": TASKS_NAMESPACE, "ip": ip, "port": port, "protocol": "TCP"}


def test_a_task_pod_reaches_only_the_gateways_port_dns_and_the_internet():
    policies = list(of_kind(PRODUCTION, "NetworkPolicy").values())
    task = docker_task_job()["spec"]["template"]["metadata"]["labels"]
    worker = work_task_job()["spec"]["template"]["metadata"]["labels"]
    services = {
        name: d["spec"]["template"]["metadata"]["labels"]
        for name, d in deployments(PRODUCTION).items()
    }
    (gateway_container,) = deployments(PRODUCTION)["gateway"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert gateway_container["ports"][0]["containerPort"] == GATEWAY_PORT
    dns = {"k8s-app": "kube-dns"}
    nats = {"app.kubernetes.io/name": "nats"}
    postgres = {"app.kubernetes.io/name": "postgresql"}
    allowed = [
        in_cluster(SERVICES_NAMESPACE, gateway_pod_labels(), GATEWAY_PORT),
        in_cluster("kube-system", dns, 53, "UDP"),
        in_cluster("kube-system", dns, 53, "TCP"),
        outside("52.216.8.1", 443),  # an object store
        outside("2600:1f18::1", 443),
    ]
    refused = [
        in_cluster(SERVICES_NAMESPACE, gateway_pod_labels(), 9090),  # another port of it
        *(
            in_cluster(SERVICES_NAMESPACE, labels, 8080)
            for labels in services.values()
            if labels != gateway_pod_labels()
        ),
        in_cluster("nats", nats, 4222),
        in_cluster("nats", nats, 8222),
        in_cluster("databases", postgres, 5432),
        in_cluster(TASKS_NAMESPACE, task, 8080),  # another task
        in_cluster("kube-system", {"component": "kube-apiserver"}, 443),
        in_cluster("default", {"app": "anything"}, 80),
        outside("10.1.2.3", 5432),  # PostgreSQL on the private network
        outside("172.20.0.10", 4222),  # NATS on the private network
        outside("192.168.1.1", 80),
        outside("169.254.169.254", 80),  # cloud metadata: node credentials
        outside("100.64.0.1", 443),
        outside(NODE_IP, 10250),  # a kubelet
        outside(CLUSTER_IP, 443),
        outside("127.0.0.1", 80),
        outside("fd00::1", 443),
    ]
    for source in (task, worker):
        for destination in allowed:
            assert egress_allowed(policies, source, destination), destination
        for destination in refused:
            assert not egress_allowed(policies, source, destination), destination


def test_nothing_connects_to_task_pods_or_to_services_but_the_gateway():
    policies = of_kind(PRODUCTION, "NetworkPolicy")
    tasks = policies["taskengine-tasks"]
    assert tasks["spec"]["podSelector"] == {} and tasks["spec"]["ingress"] == []
    assert "Ingress" in tasks["spec"]["policyTypes"]
    services = policies["taskengine-services"]
    assert services["metadata"]["namespace"] == SERVICES_NAMESPACE
    assert services["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}
    gateway = policies["taskengine-gateway"]
    assert _matches(gateway["spec"]["podSelector"], gateway_pod_labels())
    assert gateway["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]}]
    for name, d in deployments(PRODUCTION).items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert _matches(gateway["spec"]["podSelector"], labels) == (name == "gateway"), name


# --- NATS: the services' user, its password, TLS ------------------------------------------------


def users_conf() -> dict[str, str]:
    """User -> the environment variable its password comes from, in deploy/nats-users.conf."""
    text = USERS_CONF.read_text()
    found = re.findall(r"user:\s*(\S+)\s+password:\s*\$(\w+)", text)
    return dict(found)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_service_connects_to_nats_as_the_services_user_with_its_secret(layout):
    (config,) = of_kind(layout, "ConfigMap").values()
    assert config["data"]["TASKENGINE_NATS_USER"] == "taskengine"
    assert users_conf() == {
        "taskengine": "TASKENGINE_NATS_PASSWORD",
        "taskengine-subscriber": "TASKENGINE_NATS_SUBSCRIBER_PASSWORD",
    }
    for name, spec in pod_specs(layout).items():
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        if name == "taskengine-migrate":  # PostgreSQL only
            assert "TASKENGINE_NATS_PASSWORD" not in env
            continue
        ref = env["TASKENGINE_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": SECRET, "key": "nats-password"}, name


def test_production_reaches_nats_over_tls_checking_the_servers_against_its_ca():
    (config,) = of_kind(PRODUCTION, "ConfigMap").values()
    servers = config["data"]["TASKENGINE_NATS_URL"].split(",")
    assert len(servers) == 3 and all(s.startswith("tls://") for s in servers)
    # one replica of the stream per server: a node lost loses no acknowledged event
    assert config["data"]["TASKENGINE_NATS_REPLICAS"] == str(len(servers))
    ca = config["data"]["TASKENGINE_NATS_TLS_CA"]
    for name, d in deployments(PRODUCTION).items():
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["nats-ca"]["secret"]["secretName"] == "taskengine-nats-ca", name
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "nats-ca"]
        assert mount["readOnly"] is True
        assert ca == f"{mount['mountPath']}/{volumes['nats-ca']['secret']['items'][0]['path']}"
