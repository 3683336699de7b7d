"""A batch of rows as one statement parameter: a JSON array of objects, encoded by msgspec and
read back in PostgreSQL by `json_to_recordset`.

A read model's batch statements take their rows this way rather than as one array per column
(`unnest(%b::type[], ...)`): psycopg dumps a list parameter element by element in Python,
which cost a replay more than folding the events did; msgspec encodes the whole batch in C,
and `json_to_recordset` parses it faster than PostgreSQL reads the arrays. A jsonb column takes
its object as it is, with no text encoding of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from psycopg.types.json import Json

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
