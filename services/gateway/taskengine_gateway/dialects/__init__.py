"""The dialects the gateway speaks: one controller module each (`<dialect>_api`), with the
helpers only that dialect uses beside it, named for it (`taskengine_*` serve the Task Engine
dialect, seed 002; `worktasks_ws` is the work-tasks WebSocket). Each speaks HTTP around its
dialect's domain in the core (`taskengine_core.dialects.<name>`: submission, view, status).
What every dialect shares (request bodies, the error table, job I/O, auth, quotas, the
submitter, health) lives one level up, in `taskengine_gateway`."""
