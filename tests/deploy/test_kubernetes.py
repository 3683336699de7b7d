"""k8s/: what `kubectl apply -k` sends, rendered by the real kustomize (`kubectl kustomize`)
and validated against the Kubernetes OpenAPI schemas (kubernetes-validate)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from taskengine_cli.supervisor import SERVICES

from tests.deploy.files import SETTINGS, check_command, kustomize

LAYOUTS = ("base", "overlays/production")
# The newest schemas the package has, and an older cluster we still mean to run on.
VERSIONS = (all_versions()[-1], "1.29.0")
SINGLETONS = ("relay", "projector")
# Their instances share jobs' partitions (leased in PostgreSQL), each instance under its own name.
PARTITIONED = ("dispatcher", "notifier")
AUTOSCALED = ("gateway", *PARTITIONED)
PARTITIONS = 16  # taskengine_core.partitions.PARTITIONS: an instance beyond them holds none
SECRET = "taskengine"
DISPATCHER_ACCOUNT = "taskengine-dispatcher"
DISPATCHER_RULES = [
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},  # DOCKER tasks' output
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},  # storage_credentials' label
]
SERVICES_NAMESPACE, TASKS_NAMESPACE = "taskengine", "taskengine-tasks"
SECRET_KEYS = ("database-url", "webhook-key", "nats-password")


def of_kind(layout: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kustomize(layout) if o["kind"] == kind}


def deployments(layout: str) -> dict[str, dict[str, Any]]:
    """Service name -> its Deployment."""
    found = of_kind(layout, "Deployment")
    return {name.removeprefix("taskengine-"): d for name, d in found.items()}


def replicas(layout: str) -> dict[str, int]:
    """Service name -> how many pods run at least: its Deployment's count, or where an
    autoscaler sets it (the Deployment then names none), the autoscaler's minimum."""
    scaled = autoscalers(layout)
    found = {}
    for name, deployment in deployments(layout).items():
        if name in scaled:
            assert "replicas" not in deployment["spec"], f"{name}: the autoscaler sets it"
            found[name] = scaled[name]["minReplicas"]
        else:
            found[name] = deployment["spec"]["replicas"]
    return found


def autoscalers(layout: str) -> dict[str, dict[str, Any]]:
    """Service name -> the spec of the autoscaler that sets its count; each one's target is a
    Deployment that exists (an autoscaler aimed at nothing scales nothing, silently)."""
    found = deployments(layout)
    scaled = {}
    for hpa in of_kind(layout, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        name = target["name"].removeprefix("taskengine-")
        assert target["apiVersion"] == "apps/v1" and target["kind"] == "Deployment", target
        assert name in found, f"{hpa['metadata']['name']}: no Deployment {target['name']}"
        assert name not in scaled, f"{name}: two autoscalers"
        scaled[name] = hpa["spec"]
    return scaled


def instance_variables(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in container.get("env", []) if e["name"] == "TASKENGINE_INSTANCE"]


def pod_specs(layout: str) -> dict[str, dict[str, Any]]:
    specs = {n: d["spec"]["template"]["spec"] for n, d in deployments(layout).items()}
    for name, job in of_kind(layout, "Job").items():
        specs[name] = job["spec"]["template"]["spec"]
    return specs


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_object_is_valid_by_the_kubernetes_schemas(layout, version):
    objects = kustomize(layout)
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(map(str, error.absolute_path))
            raise AssertionError(f"{where} at {path}: {error.message}") from None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_deployment_per_service_runs_its_real_command(layout):
    found = deployments(layout)
    assert set(found) == set(SERVICES)
    for name, deployment in found.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "command" not in container, "args keep the image's entrypoint (tini)"
        assert container["args"] == ["python", "-m", f"taskengine_{name}"]
        check_command(container["args"])
    (migrate,) = of_kind(layout, "Job")["taskengine-migrate"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert migrate["args"] == ["taskengine", "migrate"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_replicas_and_update_strategies_keep_single_services_single(layout):
    found, counts = deployments(layout), replicas(layout)
    for name in SINGLETONS:
        assert counts[name] == 1, name
        assert found[name]["spec"]["strategy"] == {"type": "Recreate"}, name
    for name in PARTITIONED:  # one lost or drained leaves one; an update stops none first
        assert counts[name] >= 2, name
        assert found[name]["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }, name
    assert counts["admission"] == 2  # active / standby
    assert counts["scheduler"] == 2  # active / standby
    assert counts["gateway"] >= 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_scaled_services_scale_with_their_cpu_and_no_single_service_is(layout):
    scaled, found = autoscalers(layout), deployments(layout)
    assert set(scaled) == set(AUTOSCALED)  # not the relay, projector, admission or scheduler
    for name, spec in scaled.items():
        assert "replicas" not in found[name]["spec"], f"{name}: an apply would reset the count"
        assert 2 <= spec["minReplicas"] < spec["maxReplicas"], name
        if name in PARTITIONED:
            assert spec["maxReplicas"] <= PARTITIONS, name
        [metric] = spec["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu", name
        assert metric["resource"]["target"]["type"] == "Utilization", name
        container = found[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["cpu"], name  # what utilization is of


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_dispatcher_and_notifier_pod_is_an_instance_named_after_the_pod(layout):
    """Their instances share partitions by name: each pod needs a name no other pod has, kept
    for its life. Its own pod's name is; a literal would be every pod's."""
    for name, spec in pod_specs(layout).items():
        for container in spec["containers"]:
            variables = instance_variables(container)
            if name in PARTITIONED:
                assert variables == [
                    {
                        "name": "TASKENGINE_INSTANCE",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    }
                ], name
            else:  # unset: a service names itself after its host, which is its pod
                assert variables == [], name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_container_has_probes_that_check_it_and_sized_resources(layout):
    for name, deployment in deployments(layout).items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{name}: no {probe}"
            if "exec" in container[probe]:
                command = container[probe]["exec"]["command"]
                assert command == ["taskengine", "probe", name]
                check_command(command)
            else:
                assert name == "gateway"
                ports = {p["name"] for p in container["ports"]}
                assert container[probe]["httpGet"]["port"] in ports
                assert container[probe]["httpGet"]["path"] == "/"  # /health needs a client key
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} {bound}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_gateway_service_reaches_the_gateway_pods(layout):
    service = of_kind(layout, "Service")["taskengine-gateway"]
    pods = deployments(layout)["gateway"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pods["metadata"]["labels"].items()
    (container,) = pods["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_settings_are_real_and_secrets_are_only_referenced(layout):
    assert not of_kind(layout, "Secret"), "secret values are never committed"
    (config,) = of_kind(layout, "ConfigMap").values()
    assert set(config["data"]) <= SETTINGS, set(config["data"]) - SETTINGS
    for name, spec in pod_specs(layout).items():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert source == {"configMapRef": {"name": config["metadata"]["name"]}}, name
            names = {e["name"] for e in container.get("env", [])}
            assert names <= SETTINGS, f"{name}: {names - SETTINGS} are not settings"
            for variable in container.get("env", []):
                assert "value" not in variable, f"{name}: a literal belongs in the ConfigMap"
                if variable["name"] == "TASKENGINE_INSTANCE":  # the pod's name, not a secret
                    continue
                ref = variable["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET
                assert ref["key"] in SECRET_KEYS
            assert "TASKENGINE_DATABASE_URL" in names, name
    assert "TASKENGINE_NATS_URL" in config["data"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_webhook_key_reaches_the_services_that_sign_or_check_with_it(layout):
    """The notifier signs callbacks with it, the dispatcher derives workers' tokens from it and
    the gateway checks them with it; no other pod gets it."""
    given = {
        name
        for name, spec in pod_specs(layout).items()
        for container in spec["containers"]
        for variable in container.get("env", [])
        if variable["name"] == "TASKENGINE_WEBHOOK_KEY"
        and variable["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "webhook-key"}
    }
    assert given == {"notifier", "dispatcher", "gateway"}


def test_the_production_overlay_runs_the_kubernetes_executor_in_the_tasks_namespace():
    (config,) = of_kind("overlays/production", "ConfigMap").values()
    settings = config["data"]
    assert settings["TASKENGINE_EXECUTOR"] == "kubernetes"
    assert "KUBECONFIG" not in settings  # in-cluster: the dispatcher's ServiceAccount
    (role,) = of_kind("overlays/production", "Role").values()
    assert settings["TASKENGINE_KUBE_NAMESPACE"] == role["metadata"]["namespace"]
    assert settings["TASKENGINE_KUBE_NAMESPACE"] == TASKS_NAMESPACE
    assert config["metadata"]["namespace"] == SERVICES_NAMESPACE
    gateway = of_kind("overlays/production", "Service")["taskengine-gateway"]
    assert gateway["spec"]["ports"][0]["port"] == 80
    where = f"{gateway['metadata']['name']}.{gateway['metadata']['namespace']}.svc"
    assert settings["TASKENGINE_GATEWAY_URL"] == f"http://{where}"  # from the other namespace
    dispatcher = pod_specs("overlays/production")["dispatcher"]["containers"][0]
    assert settings["TASKENGINE_WORKER_IMAGE"] == dispatcher["image"]  # the engine's own image
    (base,) = of_kind("base", "ConfigMap").values()
    assert base["data"]["TASKENGINE_EXECUTOR"] == "local"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_the_dispatcher_may_use_the_kubernetes_api_and_only_in_the_tasks_namespace(layout):
    objects = kustomize(layout)
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    subjects = [s for b in bindings for s in b["subjects"]]
    assert [(s["kind"], s["name"], s["namespace"]) for s in subjects] == [
        ("ServiceAccount", DISPATCHER_ACCOUNT, SERVICES_NAMESPACE)
    ]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = of_kind(layout, "Role").values()
    assert role["metadata"]["namespace"] == TASKS_NAMESPACE
    assert bindings[0]["metadata"]["namespace"] == TASKS_NAMESPACE
    assert bindings[0]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert role["rules"] == DISPATCHER_RULES
    accounts = of_kind(layout, "ServiceAccount")
    assert set(accounts) == {"taskengine", DISPATCHER_ACCOUNT}
    assert accounts["taskengine"]["automountServiceAccountToken"] is False
    for name, spec in pod_specs(layout).items():
        if name == "dispatcher":
            assert spec["serviceAccountName"] == DISPATCHER_ACCOUNT
            continue
        assert spec["serviceAccountName"] == "taskengine", name
        assert spec["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_disruption_budgets_cover_the_replicated_services_and_allow_drains(layout):
    found, counts = deployments(layout), replicas(layout)
    budgets = of_kind(layout, "PodDisruptionBudget").values()
    covered = set()
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [
            name
            for name, d in found.items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, budget["metadata"]["name"]
        assert budget["spec"]["minAvailable"] < counts[matched[0]]
        covered.add(matched[0])
    assert covered == {"gateway", "admission", "scheduler", *PARTITIONED}


def test_the_production_overlay_pins_the_image_and_sets_namespace_replicas_and_sizes():
    base, production = deployments("base"), deployments("overlays/production")
    objects = kustomize("overlays/production")
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    in_tasks = {
        (o["kind"], o["metadata"]["name"])
        for o in namespaced
        if o["metadata"].get("namespace") == TASKS_NAMESPACE
    }
    assert in_tasks == {  # nothing of the services' runs where tasks run
        ("Role", "taskengine-dispatcher"),
        ("RoleBinding", "taskengine-dispatcher"),
        ("NetworkPolicy", "taskengine-tasks"),
        ("NetworkPolicy", "taskengine-tasks-internet"),
    }
    assert {o["metadata"].get("namespace") for o in namespaced} == {
        SERVICES_NAMESPACE,
        TASKS_NAMESPACE,
    }
    for spec in pod_specs("overlays/production").values():
        image = spec["containers"][0]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    assert replicas("overlays/production")["gateway"] > replicas("base")["gateway"]
    for name in PARTITIONED:
        most = [autoscalers(layout)[name]["maxReplicas"] for layout in LAYOUTS]
        assert most[1] > most[0], f"{name}: production may run more"
    gateway = [
        d["gateway"]["spec"]["template"]["spec"]["containers"][0] for d in (base, production)
    ]
    assert gateway[0]["resources"] != gateway[1]["resources"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_service_pod_is_annotated_for_prometheus_at_its_metrics_port(layout):
    (config,) = of_kind(layout, "ConfigMap").values()
    port = config["data"]["TASKENGINE_METRICS_PORT"]
    assert int(port) > 0
    assert config["data"]["TASKENGINE_METRICS_HOST"] == "0.0.0.0"  # reachable from outside
    for name, deployment in deployments(layout).items():
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": port,
            "prometheus.io/path": "/metrics",
        }, name
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == int(port), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_the_monitoring_namespace_reaches_the_metrics_port(layout):
    (config,) = of_kind(layout, "ConfigMap").values()
    policy = of_kind(layout, "NetworkPolicy")["taskengine-metrics"]["spec"]
    for name, deployment in deployments(layout).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items(), name
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert policy["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": monitoring}}],
            "ports": [{"protocol": "TCP", "port": int(config["data"]["TASKENGINE_METRICS_PORT"])}],
        }
    ]
