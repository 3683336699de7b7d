"""A job's queue state in the Task Engine dialect: each canonical state as the seed's name and
number (`QUEUE_STATE`), and the states each number stands for in a list's `state` filter."""

from __future__ import annotations

from taskengine_core.jobs import JobState

S = JobState
QUEUE_STATE = {
    S.QUEUED: ("queued", 0),
    S.ADMITTED: ("started", 1),
    S.RUNNING: ("started", 1),
    S.SUCCEEDED: ("completed", 2),
    S.FAILED: ("completed", 2),
    S.TIMED_OUT: ("completed", 2),
    S.RETRY_WAIT: ("pending", 3),
    S.CANCELLED: ("broken", 4),
    S.BROKEN: ("broken", 4),
    S.SCHEDULED: ("scheduled", 5),
    S.PAUSED: ("paused", 6),
}
STATE_NUMBERS: dict[int, tuple[JobState, ...]] = {
    0: (S.QUEUED,),
    1: (S.ADMITTED, S.RUNNING),
    2: (S.SUCCEEDED, S.FAILED, S.TIMED_OUT),
    3: (S.RETRY_WAIT,),
    4: (S.CANCELLED, S.BROKEN),
    5: (S.SCHEDULED,),
    6: (S.PAUSED,),
}
FAILED = (S.FAILED, S.TIMED_OUT)
"""The completed states (2) a job's `failed` flag marks."""
