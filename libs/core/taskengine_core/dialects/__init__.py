"""The dialects' domain: one folder each, for the APIs the engine speaks over its one job model.

Each dialect is an adapter: `submission` turns its request into a job's first event through
the one factory (`taskengine_core.submission.job_submitted`), `view` shows a job (or its own
aggregate) in the dialect's terms, `status` maps the canonical lifecycle onto the dialect's
states; a dialect with more to it keeps that beside them, named for what it does. The
gateway's controllers (`taskengine_gateway.dialects`) speak HTTP around these.

- `worktasks`: work tasks run by remote workers (`/api/worktasks`, seed 000)
- `scheduled`: scheduled tasks, each firing runs as jobs (`/tasks`, seed 001)
- `taskengine`: the Task Engine API (`/job`, `/jobs`, seed 002)
- `drove`: Drove container tasks (`/apis/v1`, seed 004)
"""
