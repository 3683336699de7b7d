"""What the container-tasks dialect (Drove) answers, for the OpenAPI document (see
`answers`): Drove's envelope around each answer's `data`, errors too."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from taskengine_gateway.answers import Answers

OUTCOME = Meta(description="SUCCESS, or FAILED for an error")


class DroveFailure(msgspec.Struct):
    """An error in Drove's envelope (`data.validationErrors` for a 400)."""

    status: Annotated[str, OUTCOME]
    data: dict[str, Any]
    message: str


ANSWERS = Answers(
    DroveFailure, lambda message: {"status": "FAILED", "data": {}, "message": message}
)


class Pong(msgspec.Struct):
    status: Annotated[str, OUTCOME]
    data: Annotated[str, Meta(description='"pong"')]
    message: str


class TaskId(msgspec.Struct):
    taskId: str  # noqa: N815 (Drove's name)


class TaskIdAnswer(msgspec.Struct):
    status: Annotated[str, OUTCOME]
    data: TaskId
    message: str


class Instance(msgspec.Struct):
    """A task instance (secret-looking values masked)."""

    sourceAppName: str  # noqa: N815 (Drove's names)
    taskId: str  # noqa: N815
    instanceId: Annotated[str, Meta(description="TI-<uuid>")]  # noqa: N815
    executorId: str  # noqa: N815
    hostname: str
    executable: dict[str, Any]
    resources: Annotated[
        list[dict[str, Any]], Meta(description="CPU cores and memory by NUMA node")
    ]
    volumes: list[dict[str, Any]]
    env: dict[str, str]
    state: Annotated[
        str,
        Meta(description="PENDING, PROVISIONING, STARTING, RUNNING, STOPPED, LOST, ..."),
    ]
    metadata: dict[str, str]
    errorMessage: str  # noqa: N815
    created: Annotated[int, Meta(description="epoch milliseconds")]
    updated: Annotated[int, Meta(description="epoch milliseconds")]
    taskResult: Annotated[  # noqa: N815
        dict[str, Any], Meta(description="status and exitCode, once it ran to an end")
    ] = {}


INSTANCE = {
    "sourceAppName": "billing",
    "taskId": "nightly-17",
    "instanceId": "TI-1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "executorId": "7e6d5c4b-3a29-5817-9f6e-5d4c3b2a1908",
    "hostname": "worker-1",
    "executable": {
        "type": "WORKFLOW",
        "url": "workflow://echo",
        "name": "echo",
        "parameters": {"message": "hi"},
    },
    "resources": [
        {"type": "CPU", "cores": {"0": [0]}},
        {"type": "MEMORY", "memoryInMB": {"0": 128}},
    ],
    "volumes": [],
    "env": {},
    "state": "STOPPED",
    "metadata": {},
    "taskResult": {"status": "SUCCESSFUL", "exitCode": 0},
    "errorMessage": "",
    "created": 1896100200000,
    "updated": 1896100201000,
}


class InstanceAnswer(msgspec.Struct):
    status: Annotated[str, OUTCOME]
    data: Instance
    message: str


class InstancesAnswer(msgspec.Struct):
    status: Annotated[str, OUTCOME]
    data: list[Instance]
    message: str


class LogFiles(msgspec.Struct):
    files: list[str]


class LogRead(msgspec.Struct):
    data: Annotated[str, Meta(description="the characters read")]
    offset: Annotated[int, Meta(description="where `data` starts (or, from -1, the end)")]


def enveloped(data: object) -> dict[str, Any]:
    return {"status": "SUCCESS", "data": data, "message": "success"}
