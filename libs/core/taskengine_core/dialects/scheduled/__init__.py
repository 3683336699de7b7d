"""Scheduled tasks (the `/tasks` dialect, seed 001): a task aggregate whose runs are jobs.

A task (`lifecycle`) is its own event stream: a definition, a schedule (`schedule`: cron,
rrule, once or event) and its status. Each run it fires is a job (`dialect="tasks"`) that
`submission` makes; `fields` checks a task request's fields, `runs` names the runs and
applies the dedupe rule, `status` shows a run's job in the dialect's run statuses and `view`
shows tasks and runs as the seed does.
"""

DIALECT = "tasks"
"""The `dialect` of a scheduled task run's job."""
