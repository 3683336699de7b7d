"""The Pod Security Standards' `restricted` profile, as checks on a pod spec (JSON as sent):
what Pod Security Admission would refuse in a namespace that enforces it."""

from __future__ import annotations

from typing import Any

ALLOWED_CAPABILITIES = {"NET_BIND_SERVICE"}
SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in `pod` (a PodSpec) the `restricted` profile forbids; [] when nothing."""
    found = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(f"{host}")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"hostPath volume {volume['name']}")
    context = pod.get("securityContext") or {}
    if context.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        name = container["name"]
        own = container.get("securityContext") or {}
        if not own.get("runAsNonRoot", context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        if own.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (own.get("seccompProfile") or context.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP:
            found.append(f"{name}: seccompProfile {seccomp}")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if own.get("privileged"):
            found.append(f"{name}: privileged")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - ALLOWED_CAPABILITIES:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
    return found
