# The two commands of the README: `make run` and `make test`. Both create .venv and install what they need.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST := $(VENV)/bin/pytest

SLM_PORT ?= 8001
BUSINESS_PORT ?= 8000
# The business app finds the SLM started next to it unless told otherwise.
BUSINESS_SLM_API_URL ?= http://127.0.0.1:$(SLM_PORT)
export SLM_PORT BUSINESS_PORT BUSINESS_SLM_API_URL

SLM_TEST := DJANGO_SETTINGS_MODULE=slm_project.config.settings.test
BUSINESS_TEST := DJANGO_SETTINGS_MODULE=business_project.config.settings.test

.PHONY: run test lint guardrails test-slm test-business clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-local: $(PY) requirements/base.txt requirements/slm.txt requirements/business.txt requirements/local.txt
	$(PIP) install --quiet -r requirements/local.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-local requirements/dev.txt
	$(PIP) install --quiet -r requirements/dev.txt
	touch $@

## run: install, migrate both databases, create the first admins, start every process (Ctrl-C stops all)
run: $(VENV)/.installed-local
	$(PY) manage_slm.py migrate --noinput
	$(PY) manage_business.py migrate --noinput
	$(PY) manage_slm.py collectstatic --noinput -v0
	$(PY) manage_business.py collectstatic --noinput -v0
	$(PY) manage_slm.py bootstrap_admin --env-prefix SLM_
	$(PY) manage_business.py bootstrap_admin --env-prefix BUSINESS_
	@echo "SLM ops portal: http://127.0.0.1:$(SLM_PORT)/admin/   business app: http://127.0.0.1:$(BUSINESS_PORT)/"
	exec $(VENV)/bin/honcho --procfile Procfile start

## test: install the dev requirements, run the guardrails, then every suite
test: guardrails test-slm test-business

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

guardrails: lint
	$(VENV)/bin/lint-imports
	$(SLM_TEST) $(PY) manage_slm.py check --fail-level WARNING
	$(BUSINESS_TEST) $(PY) manage_business.py check --fail-level WARNING
	$(SLM_TEST) $(PY) manage_slm.py makemigrations --check --dry-run
	$(BUSINESS_TEST) $(PY) manage_business.py makemigrations --check --dry-run

# Two runs because the two projects are two Django settings modules. pytest's exit code 5 ("no tests
# ran") is turned into a named failure: every suite has tests, so it means a collection mistake.
define run_pytest
	$(PYTEST) $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests for: $(1)" >&2; exit 1; fi; exit $$status
endef

test-slm: $(VENV)/.installed-dev
	$(call run_pytest,--ds=slm_project.config.settings.test tests/slm tests/service_kit)

test-business: $(VENV)/.installed-dev
	$(call run_pytest,--ds=business_project.config.settings.test tests/business tests/contracts tests/architecture tests/e2e)

clean:
	rm -rf var/test .pytest_cache .ruff_cache
