"""A batch of rows as one statement parameter: a JSON array of objects, encoded by msgspec and
read back in PostgreSQL by `json_to_recordset`.

A read model's batch statements take their rows this way rather than as one array per column
(`unnest(%b::type[], ...)`): psycopg dumps a list parameter element by element in Python,
which cost a replay more than folding the events did; msgspec encodes the whole batch in C,
and `json_to_recordset` parses it faster than PostgreSQL reads the arrays. A jsonb column takes
its object as it is, with no text encoding of its own.

Rows bound for a table that cannot hold any of them yet (a replay's, built from position 0)
need no statement around them: `Rows`, written in PostgreSQL's binary COPY format
(`copy_data`), which costs PostgreSQL a fifth of what parsing them from JSON and inserting
them does (5,000 log rows: 6 against 34 ms).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec
from psycopg import Cursor
from psycopg.copy import Copy, FileWriter
from psycopg.types.json import Json, set_json_dumps

Columns = tuple[tuple[str, str], ...]
"""(name, PostgreSQL type) of each column of a recordset, in its rows' keys."""

_encode = msgspec.json.Encoder().encode


def records(rows: Iterable[Any]) -> Json:
    """The rows (dicts keyed by column name, or dataclasses or Structs with those fields) as a
    `json` parameter."""
    return Json(list(rows), dumps=_encode)


def recordset(columns: Columns, alias: str = "u") -> str:
    """`json_to_recordset(%s) AS u(name type, ...)`: the rows of a `records()` parameter."""
    typed = ", ".join(f"{name} {kind}" for name, kind in columns)
    return f"json_to_recordset(%s) AS {alias}({typed})"


def names(columns: Columns) -> str:
    """The columns' names, comma-separated."""
    return ", ".join(name for name, _ in columns)


class Rows(NamedTuple):
    """Rows for `table`, each a tuple of `columns`' values, to be copied in (`copy_data`)."""

    table: str
    columns: Columns
    rows: Sequence[tuple[Any, ...]]


_COPY_TYPES = {"int": "integer"}
"""PostgreSQL's names for the types `Columns` names otherwise (psycopg knows only these)."""


def copy_data(curs: Cursor[Any], rows: Rows) -> tuple[str, bytes]:
    """(`COPY ... FROM STDIN` statement, its data): `rows` in the binary COPY format, jsonb
    values encoded by msgspec. Made with `curs`'s adapters, without a round trip."""
    set_json_dumps(_encode, curs)
    data = io.BytesIO()
    with Copy(curs, binary=True, writer=FileWriter(data)) as copy:
        copy.set_types([_COPY_TYPES.get(kind, kind) for _, kind in rows.columns])
        for row in rows.rows:
            copy.write_row(row)
    return f"COPY {rows.table} ({names(rows.columns)}) FROM STDIN (FORMAT BINARY)", data.getvalue()
