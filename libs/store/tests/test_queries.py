"""Named queries, pure parts: whose rows a list asks for. No database: the statement and its
parameters are recorded."""

from __future__ import annotations

from typing import Any

from taskengine_store import queries
from taskengine_store.queries import JobFilter


class Recorded:
    def __init__(self) -> None:
        self.sql, self.args = "", list[Any]()

    def query(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        self.sql, self.args = sql, list(args)
        return []


def test_a_job_list_is_one_clients_unless_it_names_none():
    store = Recorded()
    queries.job_list(store, JobFilter("alice"))  # type: ignore[arg-type]
    assert "j.client = %s" in store.sql and "alice" in store.args
    queries.job_list(store, JobFilter(None, dialect="drove"))  # type: ignore[arg-type]
    assert "j.client" not in store.sql.split("WHERE", 1)[1]
    assert "j.dialect = %s" in store.sql and "drove" in store.args


def test_a_task_list_is_one_clients_unless_it_names_none():
    store = Recorded()
    queries.task_list(store, "alice", 10, 0)  # type: ignore[arg-type]
    assert "client = %s" in store.sql and store.args[0] == "alice"
    queries.task_list(store, None, 10, 0, status="active")  # type: ignore[arg-type]
    assert "client" not in store.sql.split("WHERE", 1)[1] and store.args[0] == "active"
