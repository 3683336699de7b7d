# The verbs a newcomer types. Everything installs into the repo (.tools/, .venv/).
PYTHON ?= python3
UV := .tools/uv/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: up test bench lint contracts install clean

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --disable-pip-version-check "uv>=0.9,<0.14"

# Bytecode is compiled once, here: where the environment forbids writing it
# (PYTHONDONTWRITEBYTECODE), every process would compile its imports again at each start.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock $(wildcard */pyproject.toml */*/pyproject.toml)
	$(UV) sync --all-packages --frozen --python $(PYTHON) --compile-bytecode
	$(VENV)/bin/python -m compileall -q -j 0 contracts libs services
	@touch $@

install: $(VENV)/.installed

up: install
	$(VENV)/bin/taskengine up

test: install
	$(VENV)/bin/python -m pytest -q

bench: install
	$(VENV)/bin/python -m tests.bench.burndown
	$(VENV)/bin/python -m tests.bench.scheduler

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The published contracts, regenerated from the code (tests/contract fails when one is stale).
contracts: install
	$(VENV)/bin/python -m taskengine_contracts.schema > contracts/events.schema.json.new
	mv contracts/events.schema.json.new contracts/events.schema.json
	$(VENV)/bin/python -m taskengine_gateway.openapi > contracts/openapi.json.new
	mv contracts/openapi.json.new contracts/openapi.json
	$(VENV)/bin/python -m taskengine_contracts.asyncapi > contracts/asyncapi.json.new
	mv contracts/asyncapi.json.new contracts/asyncapi.json

clean:
	rm -rf .venv .tools .pytest_cache .ruff_cache .mypy_cache
