"""An attempt's output reaches the store even when it spans several flushes."""

from __future__ import annotations

import asyncio

from taskengine_core.jobs import JobRef, JobState
from taskengine_core.steps import run_steps
from taskengine_core.workflows import Step
from taskengine_dispatcher.dispatcher import Execution


async def test_lines_printed_after_a_flush_are_kept():
    ref = JobRef(
        id=__import__("uuid").uuid4(), job_id=1, client="c", version=3, state=JobState.RUNNING
    )
    execution = Execution(ref=ref, workflow="test", priority=5, attempt=1)
    stored: list[str] = []

    async def flushing() -> None:  # what Dispatcher.flush does to the buffer, repeatedly
        while True:
            await asyncio.sleep(0.05)
            lines, execution.lines = execution.lines, []
            stored.extend(line.text for line in lines)

    flusher = asyncio.create_task(flushing())
    step = Step("talk", ["sh", "-c", "echo one; sleep 0.3; echo two"])
    outcome = await run_steps([step], {}, 10.0, execution.emit)
    await asyncio.sleep(0.1)
    flusher.cancel()
    assert outcome.status == "succeeded"
    assert "one" in stored and "two" in stored
    assert stored[-1] == "'talk' completed successfully"


async def test_a_nul_byte_in_output_is_replaced_not_stored():
    lines = []
    step = Step("nul", ["sh", "-c", "printf 'a\\000b\\n'"])
    await run_steps([step], {}, 10.0, lines.append)
    assert any(line.text == "a\ufffdb" for line in lines)
