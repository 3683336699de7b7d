"""Errors in the seed's shape: `{"error": message}` with the right status, never a traceback."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_403_FORBIDDEN, HTTP_409_CONFLICT

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


def http_error(request: Request, error: HTTPException) -> Response:
    detail = error.detail
    if error.status_code == 413:
        detail = "request body too large"
    elif error.status_code == 405:
        detail = f"method {request.method} not allowed on {request.url.path}"
    elif error.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    body: dict[str, object] = {"error": detail}
    if isinstance(error, JobRefused):
        body = {"id": error.job_id, "error": detail}
    return Response(body, status_code=error.status_code, headers=error.headers)


def internal_error(request: Request, error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response({"error": "internal error"}, status_code=500)
