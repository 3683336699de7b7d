"""The Task Engine dialect's (seed 002) error shape: `{"error": message}`, and `"id"` beside
it for a refused job request (routes with `opt={"job": True}`; null for a new job). It is also
the app's default shape (unknown routes, methods)."""

from __future__ import annotations

from litestar import Request, Response
from litestar.status_codes import HTTP_403_FORBIDDEN, HTTP_409_CONFLICT

from taskengine_gateway.bodies import BodyProblem
from taskengine_gateway.errors import BadRequest, ErrorShape
from taskengine_gateway.job_io import JOB_NUMBER


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
