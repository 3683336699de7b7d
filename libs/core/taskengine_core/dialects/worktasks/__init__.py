"""Work tasks (the `/api/worktasks` dialect, seed 000): one job of the core seen through this
dialect.

A work task is a job run by a remote worker (run kind `worker`, with its resources and storage
credentials), whose `attributes` keep the request for its views (type, project, spec,
resources, data access, its priority as given). Its retry policy, set at submission, retries
transient failures only (`OOMKilled`, `Evicted`, `DeadlineExceeded`, or an attempt lost with
its worker), each after a full-jitter backoff; the core's retry rule (retries.py) applies it,
raising the memory limit after OOMKilled. A worker's status report is planned here into the
job's next event (`reports`), so the gateway only validates, plans and commits; `submission`
checks a request into its job, `status` names the seed's statuses, `view` shows a work task.
"""

DIALECT = "worktasks"
"""The `dialect` of a work task's job."""
