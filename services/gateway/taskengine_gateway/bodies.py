"""Typed request bodies: what every dialect's body decoding shares.

Litestar decodes a handler's `data:` into a msgspec Struct (and documents it in the OpenAPI
schema); what went wrong with a body reaches the dialect's error handler as one `BodyProblem`,
which each dialect words in its own shape (`errors.ErrorShape.invalid`).

A field whose type msgspec can enforce as the dialect means it (objects, strings, lists) is
declared with that type and `checked(description, example, refused)`: `refused` is how the
dialect words any value of the wrong type (or a missing required field), so the check is
declared once. Litestar decodes in msgspec's lax mode, which would turn `"3"` into 3 and
`"true"` into True; the dialects refuse those, so a number or a boolean field is declared
`Annotated[Any, described(TYPE, description, example)]`: the OpenAPI schema shows its JSON type,
and the dialect's own check validates (and words) the value as sent.
A handler takes `data: Annotated[Request, body(Request)]`: the struct's docstring and its
`EXAMPLE` describe the whole body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, get_type_hints

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, HTTPException, SerializationException
from litestar.exceptions import ValidationException as LitestarValidation
from litestar.openapi.spec import Example
from litestar.params import Body, BodyKwarg
from litestar.status_codes import HTTP_400_BAD_REQUEST

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$\.data(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_FIELD = re.compile(r"^\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class BodyProblem:
    """Why a body was refused: `message` says it; `unknown` names a field the request does
    not have (the dialects word that one themselves)."""

    message: str
    unknown: str | None = None


class BadBody(HTTPException):
    """A body refused before any dialect looked at it (NUL characters)."""

    status_code = HTTP_400_BAD_REQUEST

    def __init__(self, problem: BodyProblem):
        super().__init__(problem.message)
        self.problem = problem


def body_problem(error: Exception, request: Request) -> BodyProblem | None:
    """The problem with the request body behind `error`, or None if it is about something
    else. A field declared with `checked` words its own problem (`refused`)."""
    if isinstance(error, BadBody):
        return error.problem
    cause = error.__cause__
    if isinstance(error, ClientException) and isinstance(cause, SerializationException):
        detail = str(cause.detail).removeprefix("JSON is malformed: ")
        return BodyProblem(f"malformed JSON: {detail}")
    if not isinstance(error, LitestarValidation) or not isinstance(cause, msgspec.ValidationError):
        return None
    found = _AT.match(str(cause))
    message, path = (found["message"], found["path"]) if found else (str(cause), "")
    if message == "Object missing required field `data`":
        return BodyProblem("malformed JSON: the body is empty")
    if not path and message.startswith("Expected `object`"):
        return BodyProblem("the body must be a JSON object")
    missing = _MISSING.fullmatch(message)
    at = _FIELD.match(path)
    field = missing["field"] if missing and not path else at["field"] if at else None
    if field and (refused := refusal(request, field)):
        return BodyProblem(refused)
    if unknown := _UNKNOWN.fullmatch(message):
        where = path.lstrip(".")
        return BodyProblem(message, f"{where}.{unknown['field']}" if where else unknown["field"])
    return BodyProblem(f"{path.lstrip('.') or 'body'}: {message}")


async def before_body(request: Request) -> None:
    """What comes before a body is read: a route for clients checks their credentials first
    (a 401 before any 400; `request.state.client` keeps who it is) and charges the body to the
    client's byte budget (it may wait its turn, or get a 429), then `refuse_nul`."""
    if "client" in request.route_handler.parsed_fn_signature.parameters:
        gateway = request.app.state.gateway
        client = request.state.client = await gateway.authenticator.authenticate(request)
        # A body over the largest allowed is charged as the largest: it gets its 413.
        size = min(await body_size(request), gateway.runtime.config.max_body_bytes)
        await gateway.ingest.take(client.name, size)
    await refuse_nul(request)


async def body_size(request: Request) -> int:
    """The body's size: its Content-Length, known before it is read; else read it."""
    length = request.headers.get("content-length", "")
    return int(length) if length.isdecimal() else len(await request.body())


async def refuse_nul(request: Request) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: a body with one is refused whole."""
    if b"\\u0000" in await request.body():
        raise BadBody(BodyProblem("NUL characters (\\u0000) are not accepted"))


def given(data: msgspec.Struct) -> dict[str, Any]:
    """The fields a request body did send (`UNSET` marks the others)."""
    return {
        name: value
        for name in data.__struct_fields__
        if (value := getattr(data, name)) is not msgspec.UNSET
    }


def refusal(request: Request, field: str) -> str | None:
    """How the handler's body type words a bad `field` (its `checked` refusal), if it does."""
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    struct = data.annotation if data is not None else None
    if not isinstance(struct, type) or not issubclass(struct, msgspec.Struct):
        return None
    hint = get_type_hints(struct, include_extras=True).get(field)
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.extra and "refused" in meta.extra:
            return str(meta.extra["refused"])
    return None


def checked(description: str, example: object, refused: str) -> msgspec.Meta:
    """A typed body field's documentation (what it is for, an example value) and how the
    dialect words a value msgspec refuses for it."""
    return msgspec.Meta(
        extra_json_schema={"description": description, "examples": [example]},
        extra={"refused": refused},
    )


def described(kind: str | list[str], description: str, example: object) -> msgspec.Meta:
    """A body field's documentation: its JSON type (`kind`, or the types it may be), what it
    is for and an example value."""
    return msgspec.Meta(
        extra_json_schema={
            "description": description,
            "examples": [example],
            "extra": {"type": kind},
        }
    )


class Documented(msgspec.Struct):
    """A request body: its docstring describes it, `EXAMPLE` shows one."""

    EXAMPLE: ClassVar[dict[str, Any]] = {}


def body(request: type[Documented]) -> BodyKwarg:
    """The `data:` of a handler taking `request` as JSON, described for the OpenAPI document."""
    return Body(
        media_type=RequestEncodingType.JSON,
        description=" ".join((request.__doc__ or "").split()),
        examples=[Example(value=request.EXAMPLE)],
    )
