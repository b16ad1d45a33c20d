# Mars: `make up` runs the whole stack locally; `make test` runs every check. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export SAM_CLI_TELEMETRY := 0
# Bytecode is cached, in build/pycache rather than beside the sources (sam build's cache hashes the
# functions' folders; git ignores build/): without it every pytest process re-read and re-rewrote the
# whole suite (collecting it: 18.5 s of CPU, 8.5 s with the cache) and every stack re-compiled Mars's
# modules. Empty, PYTHONDONTWRITEBYTECODE is off, whatever the caller's environment says (issue 16).
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(CURDIR)/build/pycache

UP_ARGS ?=
# `make up AUTH=1`: API keys required, as deployed (create one with `.venv/bin/mars keys create --app A`)
AUTH ?=
ifeq ($(AUTH),1)
UP_ARGS += --auth
endif

.PHONY: install up test test-run test-env lint template-check unit integration browser system-deps faults soak bench clean proto \
	localstack localstack-test checkov

# tests/localstack run Mars on LocalStack in host mode (no Docker): localstack-core wants Python 3.13, in a
# venv of its own. python3.13 on PATH if it runs, else pyenv's.
LOCALSTACK_VENV ?= .venv-localstack
LOCALSTACK_PYTHON ?= $(shell for p in python3.13 $$(pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13 /usr/bin/python3.13; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

# tests/browser drive Debian's Chromium (apt), never a browser build downloaded at test time.
export MARS_CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# uv installs the pinned requirements into every venv: on a fresh machine pip took 92 s for
# requirements-dev.txt alone (resolving one package at a time, compiling bytecode on one core), uv 14 s
# (issue 16). uv itself comes from PyPI into .venv by the venv's own pip; it compiles no bytecode at
# install: with PYTHONPYCACHEPREFIX (above) Python reads and writes bytecode only in build/pycache,
# for the modules a run imports. pip stays in each venv for `sam build`, which builds the functions with it.
UV_VERSION := 0.13.9
UV := $(BIN)/uv
UV_INSTALL = $(UV) pip install -q --python

$(VENV)/.uv-$(UV_VERSION):
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install Python 3.11 (the Lambda runtime of template.yaml)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	@touch $@

$(BIN)/.installed: requirements-dev.txt constraints.txt pyproject.toml | $(VENV)/.uv-$(UV_VERSION)
	$(UV_INSTALL) $(BIN)/python pip==25.3 -r requirements-dev.txt -c constraints.txt
	$(UV_INSTALL) $(BIN)/python --no-deps -e .
	@touch $@

install: $(BIN)/.installed

$(LOCALSTACK_VENV)/.installed: requirements-localstack.txt constraints-localstack.txt | $(VENV)/.uv-$(UV_VERSION)
	@test -n "$(LOCALSTACK_PYTHON)" || { echo "make: Python 3.13 not found (python3.13, pyenv's 3.13.x); LocalStack's venv needs it: pyenv install 3.13, or LOCALSTACK_PYTHON=/path/to/python3.13"; exit 1; }
	@test -x $(LOCALSTACK_VENV)/bin/python || $(LOCALSTACK_PYTHON) -m venv $(LOCALSTACK_VENV)
	$(UV_INSTALL) $(LOCALSTACK_VENV)/bin/python pip==25.3 -r requirements-localstack.txt -c constraints-localstack.txt
	@touch $@

# LocalStack (localstack-core, host mode) in .venv-localstack, for tests/localstack and `mars up --endpoint`
localstack: $(LOCALSTACK_VENV)/.installed

localstack-test: install localstack
	MARS_REQUIRE_LOCALSTACK=1 $(BIN)/python -m pytest -q tests/localstack

# checkov (IaC security scanner) conflicts with requirements-dev.txt's pins (boto3, packaging, networkx):
# it gets a venv of its own, like LocalStack.
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt constraints-checkov.txt | $(VENV)/.uv-$(UV_VERSION)
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install Python 3.11"; exit 1; }
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(UV_INSTALL) $(CHECKOV_VENV)/bin/python pip==25.3 -r requirements-checkov.txt -c constraints-checkov.txt
	@touch $@

checkov: $(CHECKOV_VENV)/.installed

up: install
	$(BIN)/mars up $(UP_ARGS)

# checkov scans the SAM template as written (AWS::Serverless::*) and as the SAM transform expands it
# (tools/sam_translate.py: the generated roles, permissions and stages), the shim's template and its
# Dockerfile. Every finding is fixed or skipped inline in the template (Metadata: checkov: skip: id +
# comment), so any new finding fails lint. Offline: no Prisma Cloud guidelines download (BC_SKIP_MAPPING).
# mypy (configured in pyproject.toml) checks the layer, the functions, the shim, the CLI, the runtime and the benchmarks.
lint: install checkov
	$(BIN)/ruff check .
	$(BIN)/mypy layers/common/mars_common functions grpc_shim mars samlocal bench
	$(BIN)/hadolint grpc_shim/Dockerfile
	$(BIN)/python tools/sam_translate.py template.yaml build/template.translated.json
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation dockerfile \
	  -f template.yaml -f build/template.translated.json -f grpc_shim/template.yaml -f grpc_shim/Dockerfile

# cfn-lint, sam validate --lint and a container-less sam build of the very template we run locally.
template-check: install
	@mkdir -p build
	$(BIN)/cfn-lint template.yaml grpc_shim/template.yaml
	$(BIN)/sam validate --lint --region us-east-1 --template-file template.yaml
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/sam build --template-file template.yaml --build-dir build/sam --cache-dir build/sam-cache --cached --region us-east-1 >build/sam-build.log 2>&1 || { tail -40 build/sam-build.log; exit 1; }
	@echo "sam build: ok (build/sam)"

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install
	$(BIN)/python -m pytest -q tests/integration

# The fault-injection suite at 600 events runs inside `make test`; `make soak` runs it at 10,000 and
# then the overload soak (a burst at twice the local drain rate).
faults: install
	$(BIN)/python -m pytest -q tests/faults

soak: install
	MARS_FAULT_EVENTS=10000 $(BIN)/python -m pytest -q -s tests/faults
	$(BIN)/python -m bench.soak

# Debian packages: Chromium for tests/browser, wrk for benchmark (c) and its test.
system-deps:
	@missing=""; test -x $(MARS_CHROMIUM) || missing="$$missing chromium"; \
	  command -v wrk >/dev/null || missing="$$missing wrk"; \
	  if [ -n "$$missing" ]; then echo "make: installing$$missing"; \
	    $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

browser: install system-deps
	$(BIN)/python -m pytest -q tests/browser

# The suite on TEST_WORKERS pytest-xdist workers, one module at a time per worker, the slowest modules first,
# plus WAITING_WORKERS that take only the modules whose time is timers, not CPU (tests/scheduling.py); the 15
# slowest tests and modules (wall and CPU) are listed at the end. 2 CPU workers on 2 cores: a third was no
# faster in CI (993 s against 936 s) and starved the shared stacks until two tests timed out (README,
# "Tests"); TEST_WORKERS=0 runs it in this process; `make test TEST_WORKERS=6` on a bigger machine.
TEST_WORKERS ?= 2
WAITING_WORKERS ?= 1
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(shell echo $$(($(TEST_WORKERS) + $(WAITING_WORKERS)))) --dist loadfile --no-loadscope-reorder)

# schemathesis gives its per-operation cases one node id, which xdist would run once: that module runs apart.
SCHEMATHESIS := tests/fuzz/test_schemathesis.py

# What the suite needs, made side by side: the three venvs download while apt installs Chromium (issue
# 16: on a fresh machine the installs, lint and template checks took 4.5 min one after another).
test-env: install localstack checkov system-deps

# With workers, the lint and template checks (~1 min) and schemathesis (~45 s, its own stack on ports
# below the workers' blocks) run beside the main suite, in the CPU its waits leave idle; their output is
# kept in build/ and shown when the suite ends, and any of the three failing fails `make test`.
# The run's CPU, every process it starts counted (orphans too: tests/cputime.py), printed at its end:
# on a 2-core machine the suite needs more than 5 minutes' worth of it (issue 16). `make test-run`: the
# run alone, without the installs or that line.
test:
	@$(MAKE) --no-print-directory -j4 test-env
	@$(BIN)/python -m tests.cputime --label "make test" -- $(MAKE) --no-print-directory test-run

test-run:
ifeq ($(TEST_WORKERS),0)
	@$(MAKE) --no-print-directory -j2 lint template-check
	MARS_REQUIRE_LOCALSTACK=1 $(BIN)/python -m pytest -q tests --durations=15
else
	@mkdir -p build; \
	$(MAKE) --no-print-directory -j2 lint template-check >build/checks.log 2>&1 & checks=$$!; \
	MARS_TEST_PORTS=6000-9999 $(BIN)/python -m pytest -q -p no:cacheprovider $(SCHEMATHESIS) >build/schemathesis.log 2>&1 & fuzz=$$!; \
	MARS_REQUIRE_LOCALSTACK=1 MARS_WAITING_WORKERS=$(WAITING_WORKERS) $(BIN)/python -m pytest -q tests $(PYTEST_PARALLEL) --durations=15 --ignore=$(SCHEMATHESIS); suite=$$?; \
	wait $$checks; checked=$$?; wait $$fuzz; fuzzed=$$?; \
	echo "== lint and template checks: $$([ $$checked = 0 ] && echo passed || echo FAILED) (build/checks.log)"; \
	[ $$checked = 0 ] && grep -E "^(All checks|Success|Passed checks|sam build)" build/checks.log || cat build/checks.log; \
	echo "== $(SCHEMATHESIS): $$([ $$fuzzed = 0 ] && echo passed || echo FAILED) (build/schemathesis.log)"; \
	[ $$fuzzed = 0 ] && tail -1 build/schemathesis.log || cat build/schemathesis.log; \
	[ $$suite = 0 ] && [ $$checked = 0 ] && [ $$fuzzed = 0 ]
endif

# Each run is recorded in bench/runs/ and docs/BENCHMARKS.md's current table is rendered from them.
bench: install system-deps
	$(BIN)/python -m bench --record
	$(BIN)/python -m bench.table
	$(BIN)/python -m bench.wru
	$(BIN)/python -m bench.sqs_depth
	$(BIN)/python -m bench.moto_dynamodb

# Generated gRPC code is committed; tests/unit/test_proto.py fails when it is stale.
proto: install
	$(BIN)/python -m grpc_tools.protoc -Igrpc_shim=. --python_out=. --grpc_python_out=. --pyi_out=. grpc_shim/event.proto

clean:
	rm -rf build .pytest_cache
