"""Documented answers: what a route answers, declared beside it (`responses=`).

Handlers build their answers as the dialects' views (plain dicts), so the OpenAPI document
learns their shape from here: a msgspec Struct per answer (`data_container`) and an example.
The Structs are never encoded; the schemathesis run (`tests/e2e/test_openapi_fuzz.py`) checks
every real answer against them, so a Struct that stopped telling the truth fails a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import QueryParameter

AUTHENTICATED = (401, 429)
"""What any route for clients may answer: bad credentials, or too many failed attempts."""

MESSAGES = {
    400: "priority must be an integer from 1 to 10",
    401: "invalid client or api-key",
    403: "settings can be changed only by an admin client",
    404: "not found",
    409: "changed concurrently; retry",
    413: "request body too large",
    422: "title is required",
    429: "too many failed attempts: retry in 30 seconds",
    500: "postgres unreachable",
}
"""An example message for each error status (the dialect's error body carries the real one)."""


def answer(
    shape: Any, example: object, description: str, media_type: str = MediaType.JSON
) -> ResponseSpec:
    """One documented answer: its schema (`shape`, a Struct or a type), an example and what
    it means."""
    return ResponseSpec(
        data_container=shape,
        description=description,
        media_type=media_type,
        examples=[Example(summary=description, value=example)],
        generate_examples=False,
    )


@dataclass(frozen=True)
class Answers:
    """How one dialect answers, for its routes' `responses=`: the error body (`error`, a Struct)
    with an example around a message (`example`)."""

    error: type
    example: Callable[[str], object]

    def __call__(
        self,
        status: int,
        shape: Any,
        example: object,
        description: str,
        *errors: int,
        media_type: str = MediaType.JSON,
    ) -> dict[int, ResponseSpec]:
        """The route's answer (`status`, `shape`, `example`) and the `errors` it may give.
        A 400 is always among them: Litestar documents one for any route with parameters or
        a body, and the dialect answers it in its own shape."""
        return {
            status: answer(shape, example, description, media_type),
            **{code: self.failure(code) for code in sorted({400, *errors})},
        }

    def failure(self, status: int) -> ResponseSpec:
        return answer(self.error, self.example(MESSAGES[status]), HTTPStatus(status).phrase)


def query(description: str, example: str, name: str | None = None) -> QueryParameter:
    """A documented query parameter, taken as the string sent (`str | None`, so Litestar never
    refuses it): the dialect checks it and words what is wrong in its own shape. `name`: the
    parameter's name when it cannot be the handler's (`from`, `client`)."""
    return QueryParameter(
        name=name, description=description, examples=[Example(value=example)], required=False
    )
