"""Poison isolation: the culprit of a failing batch is set aside, the rest handled once, in
order; transient failures are waited out without setting anything aside."""

from __future__ import annotations

import eventsourcing.persistence as es
import psycopg
import pytest
from nats.aio.msg import Msg
from taskengine_runtime import failures
from taskengine_runtime.bus import Delivered, in_order, position_of
from taskengine_runtime.failures import Transient, is_transient, isolating
from taskengine_runtime.pull import consumer_sequence, pending_of


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    async def instant(_: float) -> None:
        return None

    monkeypatch.setattr(failures.asyncio, "sleep", instant)


class Recorder:
    def __init__(self, poison: set[int], error: type[Exception] = ValueError, heal_after: int = 0):
        self.poison, self.error, self.heal_after = poison, error, heal_after
        self.handled: list[int] = []
        self.calls = 0
        self.set_aside: list[tuple[int, str, int]] = []

    async def handle(self, batch) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.heal_after and self.calls > self.heal_after:
            self.poison = set()
        if self.poison & set(batch):
            raise self.error(f"cannot handle {sorted(self.poison & set(batch))}")
        self.handled.extend(batch)

    async def reject(self, item: int, error: BaseException, attempts: int) -> None:
        self.set_aside.append((item, str(error), attempts))


async def test_the_culprit_in_the_middle_is_set_aside_after_n_failures_and_the_rest_handled_once():
    recorder = Recorder(poison={37})
    await isolating(list(range(1, 101)), recorder.handle, recorder.reject, 5, "test")
    assert recorder.handled == [i for i in range(1, 101) if i != 37]  # in order, each once
    assert recorder.set_aside == [(37, "cannot handle [37]", 5)]


async def test_two_culprits_are_each_set_aside():
    recorder = Recorder(poison={1, 100})
    await isolating(list(range(1, 101)), recorder.handle, recorder.reject, 3, "test")
    assert recorder.handled == list(range(2, 100))
    assert [item for item, _, _ in recorder.set_aside] == [1, 100]
    assert all(attempts == 3 for _, _, attempts in recorder.set_aside)


async def test_a_failure_that_passes_before_n_sets_nothing_aside():
    recorder = Recorder(poison={3}, heal_after=2)
    await isolating([1, 2, 3, 4], recorder.handle, recorder.reject, 5, "test")
    assert sorted(recorder.handled) == [1, 2, 3, 4] and recorder.set_aside == []


@pytest.mark.parametrize(
    "error",
    [
        Transient,
        es.OperationalError,
        es.InterfaceError,
        psycopg.OperationalError,
        ConnectionRefusedError,
        TimeoutError,
    ],
)
async def test_a_transient_failure_is_retried_past_n_without_setting_anything_aside(error):
    recorder = Recorder(poison={2}, error=error, heal_after=20)
    await isolating([1, 2, 3], recorder.handle, recorder.reject, 5, "test")
    assert recorder.handled == [1, 2, 3]  # whole batch once the store is back, never split
    assert recorder.set_aside == [] and recorder.calls == 21


@pytest.mark.parametrize(
    "missing",
    [
        psycopg.errors.UndefinedFunction("function taskengine_fence(...) does not exist"),
        psycopg.errors.UndefinedTable('relation "admission_queue" does not exist'),
        psycopg.errors.UndefinedColumn('column "concurrency_key" does not exist'),
    ],
    ids=type,
)
async def test_a_schema_older_than_the_code_is_waited_for_not_blamed_on_messages(missing):
    """An upgrade's services may start before its migration ran: as eventsourcing raises it."""

    class Migrated(Recorder):
        async def handle(self, batch) -> None:  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls <= 20:
                raise es.ProgrammingError(str(missing)) from missing
            self.handled.extend(batch)

    recorder = Migrated(poison=set())
    await isolating([1, 2, 3], recorder.handle, recorder.reject, 5, "test")
    assert recorder.handled == [1, 2, 3] and recorder.set_aside == []
    assert not is_transient(es.ProgrammingError("syntax error at or near"))


def test_a_plan_prepared_before_a_migration_is_transient_other_unsupported_features_not():
    stale = psycopg.errors.FeatureNotSupported("cached plan must not change result type")
    try:
        raise es.NotSupportedError(str(stale)) from stale  # as eventsourcing wraps it
    except es.NotSupportedError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(psycopg.errors.FeatureNotSupported("cannot do this in a function"))


def test_transient_is_recognised_through_explicit_causes_only():
    class Wrapped(Exception):
        pass

    try:
        try:
            raise psycopg.OperationalError("connection refused")
        except psycopg.OperationalError as cause:
            raise Wrapped("store call failed") from cause
    except Wrapped as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(es.DataError("unsupported Unicode escape sequence"))
    assert not is_transient(ValueError("bad"))
    try:
        try:
            raise TimeoutError
        except TimeoutError:
            raise KeyError("a bug while handling a timeout") from None
    except KeyError as bug:
        assert not is_transient(bug)


@pytest.mark.parametrize(
    ("headers", "position"),
    [
        (None, 0),
        ({}, 0),
        ({"Taskengine-Position": "42"}, 42),
        ({"Taskengine-Position": "forty-two"}, 0),
        ({"Taskengine-Position": "-5"}, 0),
        ({"Nats-Msg-Id": "x:1"}, 0),
    ],
)
def test_position_of_a_message_without_a_valid_header_is_none(headers, position):
    assert position_of(headers) == position


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.TASKENGINE.admission.1.523.17.1764800000000000000.4",
        "$JS.ACK._.HASH.TASKENGINE.admission.2.523.18.1764800000000000000.4.token",
        "$JS.ACK.hub.HASH.TASKENGINE.admission.2.523.19.1764800000000000000.4",
    ],
)
def test_consumer_sequence_reads_what_nats_py_reads_from_a_delivery(reply):
    assert consumer_sequence(reply) == Msg.Metadata._from_reply(reply).sequence.consumer


@pytest.mark.parametrize(
    "reply",
    [None, "", "_INBOX.abc.1", "$JS.ACK.S.c.1.2", "$JS.ACK.S.c.1.2.x.4.5", "$JS.API.a.b.c.d.1.2"],
)
def test_a_message_that_is_no_jetstream_delivery_has_no_consumer_sequence(reply):
    assert consumer_sequence(reply) is None
    assert pending_of(reply) is None


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.TASKENGINE.admission.1.523.17.1764800000000000000.0",
        "$JS.ACK.TASKENGINE.admission.1.523.17.1764800000000000000.4",
        "$JS.ACK._.HASH.TASKENGINE.admission.2.523.18.1764800000000000000.4.token",
        "$JS.ACK.hub.HASH.TASKENGINE.admission.2.523.19.1764800000000000000.7",
    ],
)
def test_pending_of_reads_what_nats_py_reads_from_a_delivery(reply):
    assert pending_of(reply) == Msg.Metadata._from_reply(reply).num_pending


def test_a_forged_position_out_of_order_does_not_hide_the_real_events_around_it():
    real = [Delivered(p, None) for p in (11, 12, 13)]  # type: ignore[arg-type]
    forged = Delivered(15, None)  # type: ignore[arg-type]
    batch = in_order([forged, *real, Delivered(12, None)])  # type: ignore[arg-type]
    assert [d.position for d in batch] == [11, 12, 13, 15]
    assert in_order(real) is real  # the relay's order: left as it is
