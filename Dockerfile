# syntax=docker/dockerfile:1
# One image for every Taskengine process; the command chooses which:
#   docker run IMAGE python -m taskengine_gateway     (relay, projector, scheduler, admission,
#                                                      dispatcher, notifier likewise)
#   docker run IMAGE taskengine migrate               (any `taskengine` command)
# Settings come only from TASKENGINE_* environment variables at run time: nothing secret is
# built in.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the locked dependencies and the workspace packages, into /app/.venv -------------
FROM ${PYTHON_IMAGE} AS build
# The uv the Makefile uses (`uv>=0.9,<0.14`), pinned so builds repeat.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY contracts contracts
COPY libs libs
COPY services services
# Exactly the lockfile's versions (--frozen); no test tools (--no-dev); the packages installed
# as wheels (--no-editable), so the runtime stage needs the venv and nothing from /src.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --all-packages --frozen --no-dev --no-editable

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to the service and reaps the dispatcher's orphaned step
# processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 taskengine \
    && useradd --system --uid 10001 --gid taskengine --home-dir /home/taskengine \
       --create-home --shell /usr/sbin/nologin taskengine
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKENGINE_HOST=0.0.0.0 \
    TASKENGINE_PORT=8080 \
    TASKENGINE_DATA_DIR=/tmp/taskengine
WORKDIR /home/taskengine
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "taskengine_gateway"]
