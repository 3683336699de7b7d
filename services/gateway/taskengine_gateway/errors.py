"""Errors in each dialect's own shape, never a traceback.

One handler serves every dialect; an `ErrorShape` says what differs: the body around a message,
how a bad request body is worded, the dialect's own exceptions, the 401 challenge. Each dialect
declares its shape beside its controller (`dialects/`); the app's default is the Task Engine's
(`dialects.taskengine_errors.TASKENGINE`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_403_FORBIDDEN
from litestar.types import ExceptionHandlersMap

from taskengine_gateway.bodies import BodyProblem, body_problem

log = logging.getLogger(__name__)


class BadRequest(HTTPException):
    """A request refused with a 400, in whichever dialect's shape answers it."""

    status_code = HTTP_400_BAD_REQUEST


class Forbidden(HTTPException):
    """A request beyond what the client may do, refused with a 403."""

    status_code = HTTP_403_FORBIDDEN


def _no_own(request: Request, error: Exception) -> Response | None:
    return None


@dataclass(frozen=True)
class ErrorShape:
    """How one dialect answers an error."""

    body: Callable[[str], object]
    """The answer's body around a message."""
    invalid: Callable[[Request, BodyProblem], Exception]
    """A bad request body as this dialect's exception (answered by this same handler)."""
    own: Callable[[Request, Exception], Response | None] = _no_own
    """The answer to one of the dialect's own exceptions (None: not one of them)."""
    too_large: str = "request body too large"
    not_allowed: str = "method {method} not allowed on {path}"
    challenge: str | None = None
    """`WWW-Authenticate` of a 401 (None: the exception's own headers)."""
    internal: object = None
    """The body of a 500 (None: `body("internal error")`)."""

    def answer(self, request: Request, error: Exception) -> Response:
        problem = body_problem(error, request)
        if problem is not None:
            error = self.invalid(request, problem)
        if (own := self.own(request, error)) is not None:
            return own
        if not isinstance(error, HTTPException):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            internal = self.body("internal error") if self.internal is None else self.internal
            return Response(internal, status_code=500)
        detail, status = error.detail, error.status_code
        if status == 413:
            detail = self.too_large
        elif status == 405:
            detail = self.not_allowed.format(method=request.method, path=request.url.path)
        elif status == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        headers = error.headers
        if self.challenge and isinstance(error, NotAuthorizedException):
            headers = {"WWW-Authenticate": self.challenge}
        return Response(self.body(detail), status_code=status, headers=headers)


def handler(shape: ErrorShape) -> ExceptionHandlersMap:
    """The `exception_handlers` of a layer that answers in `shape`."""
    return {HTTPException: shape.answer, Exception: shape.answer}
