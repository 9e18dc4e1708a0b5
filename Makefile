# Two commands matter: `make run` (install, then start the product locally) and
# `make test` (install, then run every check CI runs). Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest pytest-rabbitmq docker-check clean

$(STAMP): pyproject.toml sandbox/pyproject.toml bench/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,flower]' -e ./sandbox -e ./bench
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m worker.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

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

# No Docker engine runs where the tests run: check the image and stack statically, with
# .env.example as the services' env_file and as the source of ${...} values (FLOWER_BASIC_AUTH).
docker-check: $(STAMP)
	$(BIN)/hadolint docker/Dockerfile
	command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)
	CASHRECEIPT_ENV_FILE=.env.example docker-compose --env-file docker/.env.example \
		-f docker/docker-compose.yml --profile dev config -q

test: lint typecheck docker-check pytest pytest-rabbitmq

clean:
	rm -rf $(VENV) build dist *.egg-info
