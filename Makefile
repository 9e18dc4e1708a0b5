# Two commands matter: `make run` (install, then start the product locally) and
# `make test` (install, then run every check CI runs). Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest docker-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

# No Docker engine runs where the tests run: check the image and stack statically, with
# .env.example as the services' env_file and as the source of ${...} values (FLOWER_BASIC_AUTH).
docker-check: $(STAMP)
	$(BIN)/hadolint docker/Dockerfile
	command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)
	CASHRECEIPT_ENV_FILE=.env.example docker-compose --env-file docker/.env.example \
		-f docker/docker-compose.yml --profile dev config -q

test: lint typecheck docker-check pytest

clean:
	rm -rf $(VENV) build dist *.egg-info
