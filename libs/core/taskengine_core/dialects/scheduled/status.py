"""A scheduled task run's status: its job's canonical state in the seed's words (`retrying`,
`running`, `canceled`; the other states keep their names)."""

from __future__ import annotations

RUN_STATUS = {"retry_wait": "retrying", "admitted": "running", "cancelled": "canceled"}


def run_status(state: str) -> str:
    """The run status of a run whose job is in `state`."""
    return RUN_STATUS.get(state, state)
