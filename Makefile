# Two commands matter: `make run` (install, then start the product locally) and
# `make test` (install, then run every check CI runs). Both build .venv themselves,
# from uv.lock as it is (`uv sync --frozen`): two installs of one commit are the same.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# uv itself, pinned with its hashes (tools/uv-requirements.txt, exported from the uv
# dependency group), in a venv of its own: no curl | sh, no uv from whatever PATH has.
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
# The runtime with Flower (`make run` starts it), the sandbox and the benchmark (workspace
# members), and the dev group. Never resolves again; `make lint` checks that uv.lock
# still matches every pyproject.toml.
SYNC   := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never \
	$(UV) sync --frozen --all-packages --extra flower --group dev --python $(PYTHON)

.PHONY: install run test lint typecheck audit pytest pytest-rabbitmq docker-check lock clean

$(UV): tools/uv-requirements.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --require-hashes --no-deps -r tools/uv-requirements.txt
	touch $(UV)

$(STAMP): $(UV) uv.lock pyproject.toml sandbox/pyproject.toml bench/pyproject.toml
	$(SYNC) --quiet
	touch $(STAMP)

install: $(STAMP)

# After changing a dependency in any pyproject.toml: resolve again and commit uv.lock.
lock: $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) lock --python $(PYTHON)
	$(UV) export --frozen --only-group uv --no-emit-workspace --no-header \
		-o tools/uv-requirements.txt >/dev/null

run: $(STAMP)
	$(BIN)/python -m worker.demo

# lint-imports keeps the import contracts of pyproject.toml's [tool.importlinter].
lint: $(STAMP)
	UV_PYTHON_DOWNLOADS=never $(UV) lock --check --offline --python $(PYTHON)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The locked set against the known vulnerabilities (uv audit, OSV): a finding fails,
# unless tools/audit-ignore.toml lists it with a reason and an unexpired date; an
# advisory service out of reach is said on one line and does not (tools/audit.py).
audit: $(STAMP)
	$(BIN)/python tools/audit.py

pytest: $(STAMP)
	$(BIN)/pytest

# The integration tests that cover the broker's part (issuing, retries, cancellation,
# events, parking and requeue, shutdown hand-back, dead letters, killed workers, the
# ingress) once more with RabbitMQ as the broker: 127.0.0.1:5672 (RABBITMQ_URL), a
# virtual host per private Redis, made with rabbitmqctl. Skipped, with the reason,
# where there is no RabbitMQ. `make pytest-rabbitmq RABBITMQ_TESTS=tests/integration`
# runs all of them (tests that read the Redis broker's own lists are skipped there).
RABBITMQ_TESTS ?= $(addprefix tests/integration/test_,issue.py cancellation.py events.py \
	parked.py shutdown.py dead_letters.py outage_and_recovery.py ingress.py)
pytest-rabbitmq: $(STAMP)
	BROKER=rabbitmq $(BIN)/pytest $(RABBITMQ_TESTS)

# No Docker engine runs where the tests run: lint the Dockerfile, and validate the compose
# files as Compose v2 reads them, against the Compose specification's JSON schema
# (compose-spec/compose-spec, schema/compose-spec.json, as the locked check-jsonschema
# 0.39.0 vendors it: JSON Schema 2020-12, sha256 d549057e...). Compose v1's
# `docker-compose config` is not what users run.
COMPOSE_FILES := docker/docker-compose.yml docker/broker-rabbitmq.yml
docker-check: $(STAMP)
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec $(COMPOSE_FILES)

test: lint typecheck audit docker-check pytest pytest-rabbitmq

clean:
	rm -rf $(VENV) $(TOOLS) build dist *.egg-info
