"""Drove container tasks (seed 004): one job of the core seen through Drove's task API.

A task is a job (`dialect="drove"`) whose `attributes` keep Drove's task spec, its `opSpec` and
its `instanceId` for its views. A WORKFLOW executable runs a registered workflow's steps with
its parameters and the task's `env` in their environment; a DOCKER one runs as a container
(run kind `container`: its image, args, env, resources and volumes; workflow `docker`), a
plain Kubernetes Job of its image: any other executor fails it before it starts, so it ends
PROVISIONING_FAILED saying what to configure. Its volumes are host paths: only under the
operator's `TASKENGINE_KUBE_HOST_PATHS`. `opSpec.timeout` bounds the operation, as in Drove: a
task not started within it is never started (PROVISIONING_FAILED), and one that runs that long
is stopped (TIMED_OUT). A task runs once: its retry policy allows no retries; a rerun (Task
Engine API) is a new instance of the same taskId (`rerun_attributes`).

`submission` checks a task operation and makes a CREATE's job, `status` maps the lifecycle
onto Drove's task states, `view` shows a task instance as Drove does.
"""

DIALECT = "drove"
"""The `dialect` of a Drove task's job."""
