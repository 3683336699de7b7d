"""Errors in each dialect's own shape, never a traceback.

One handler serves every dialect; an `ErrorShape` says what differs: the body around a message,
how a bad request body is worded, the dialect's own exceptions, the 401 challenge. The app's
default is the Task Engine shape (seed 002): `{"error": message}` (and `"id"` for a refused
job request: routes with `opt={"job": True}`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_403_FORBIDDEN, HTTP_409_CONFLICT
from litestar.types import ExceptionHandlersMap

from taskengine_gateway.bodies import BodyProblem, body_problem
from taskengine_gateway.job_io import JOB_NUMBER

log = logging.getLogger(__name__)


class BadRequest(HTTPException):
    status_code = HTTP_400_BAD_REQUEST


class JobRefused(BadRequest):
    """A refused job request: the seed's shape names the job id too (None for a new job)."""

    def __init__(self, detail: str, job_id: int | None = None):
        super().__init__(detail)
        self.job_id = job_id


class JobConflict(JobRefused):
    status_code = HTTP_409_CONFLICT


class JobForbidden(JobRefused):
    """A job request beyond what this client may do (a quota)."""

    status_code = HTTP_403_FORBIDDEN


class Forbidden(HTTPException):
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
        problem = body_problem(error)
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


# --- the Task Engine shape (seed 002) --------------------------------------------------------

UPDATABLE = "persist, priority, queue_state, run_at, semaphore_url"


def _job_id(request: Request) -> int | None:
    """The job a `/jobs/<id>` request is about (None for a new job)."""
    given = str(request.path_params.get("job_id", ""))
    return int(given) if JOB_NUMBER.fullmatch(given) else None


def _refused(request: Request, problem: BodyProblem) -> Exception:
    if problem.unknown:  # only PATCH /jobs/<id> refuses unknown fields
        return BadRequest(f"cannot update {problem.unknown}; can: {UPDATABLE}")
    return BadRequest(problem.message)


def _job_refusal(request: Request, error: Exception) -> Response | None:
    """On a job route a bad request names the job (`id`, null for a new one)."""
    if isinstance(error, JobRefused):
        body = {"id": error.job_id, "error": error.detail}
    elif isinstance(error, BadRequest) and request.route_handler.opt.get("job"):
        body = {"id": _job_id(request), "error": error.detail}
    else:
        return None
    return Response(body, status_code=error.status_code, headers=error.headers)


TASKENGINE = ErrorShape(body=lambda message: {"error": message}, invalid=_refused, own=_job_refusal)
