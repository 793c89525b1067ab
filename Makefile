# Two commands: `make run` starts the whole product, `make test` runs every test.
# Both create the virtualenv and install the pinned requirements first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
export DATA_DIR
# The workflow sandbox (the benchmark's floor workflow) imports
# modules again for every run; without a bytecode cache that is a compile each time.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test lint bench chaos install clean reset

# `make run` starts the product under supervisord (tools/stack.py): the Temporal dev
# server (unless TEMPORAL_ADDRESS is set) on TEMPORAL_DEV_IP:TEMPORAL_DEV_PORT with its
# UI on TEMPORAL_UI_PORT, the worker (its SDK metrics on WORKER_METRICS_PORT, 9464
# unless set; empty for none), the web app on WEB_PORT and the local mail sink (unless
# SMTP_URL is set). A process that dies is started again; the others keep serving.
# Each process's log is in DATA_DIR/logs. Ctrl+C stops everything.
run: install
	@exec $(BIN)/python -m tools.stack run

# While `make run` runs, in a second terminal: stop or start the worker, run N workers,
# see each process's state, follow every log.
SUPERVISORCTL = $(BIN)/supervisorctl -c "$(DATA_DIR)/run/supervisord.conf"
.PHONY: worker-stop worker-start workers status logs
worker-stop:
	@$(SUPERVISORCTL) stop worker 'more-workers:*'
worker-start:
	@$(SUPERVISORCTL) start worker
workers:
	@$(BIN)/python -m tools.stack workers $(or $(N),1)
status:
	@$(BIN)/python -m tools.stack status
logs:
	@tail -n 20 -F "$(DATA_DIR)"/logs/*.log

test: install
	$(BIN)/python -m pytest

# Lint, format and types (ruff and mypy; settings in pyproject.toml). `ruff format .` fixes the format.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# A longer crash run than the one in `make test`: its own processes, prints its figures.
chaos: install
	$(BIN)/python -m tools.chaos

# Needs `make run` (or another running app and server) in a second terminal.
bench: install
	$(BIN)/python load_test.py --benchmark

install: $(VENV)/.installed

# The first time, it says what it is doing: pip is quiet, and the install takes about a minute.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@echo "Setting up $(VENV): installing the pinned requirements (about a minute, the first time) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $@
	@echo "$(VENV) is ready."

clean:
	rm -rf $(VENV) .pytest_cache

# Empties the demo data: applications, orders, emails, the dev server's history and
# the generated secrets (a new operator token next start). Stop `make run` first.
reset:
	@if pgrep -f "temporal server start-dev .*--db-filename $(DATA_DIR)/temporal.db" > /dev/null; then \
		echo "make run is still running on $(DATA_DIR): stop it (Ctrl+C) first"; exit 1; fi
	rm -rf "$(DATA_DIR)"
	@echo "Demo data removed: the next make run starts empty"

# Mutation testing, not part of `make test` (about 3 minutes): mutmut changes the
# store, the loan validation and the loan decision rules one small edit at a time
# and runs their fast tests against each change; a change no test notices is a
# survivor. Settings in setup.cfg; `$(BIN)/mutmut show NAME` shows one mutant.
.PHONY: mutate
mutate: install
	rm -rf mutants && mkdir mutants
	nice -n 19 $(BIN)/mutmut run --max-children 1 "core.store.files.*" \
		"loans.validation.x_parse_json_application__*" "loans.validation.x_parse_form_application__*" \
		"loans.validation.x_revalidate__*" "loans.validation.x__errors_by_field__*" "loans.validation.x__parse_number__*" \
		"loans.validation.x__to_application__*" "loans.validation.x*_ApplicationModel*" "loans.validation.x*InvalidApplication*" \
		"loans.decision.x_loan_to_income__*" "loans.decision.x*CreditRules*decide__*" \
		"loans.decision.x*CreditRules*_compliance_denial__*" "loans.decision.x*CreditRules*_credit_decision__*" \
		"loans.decision.x*CreditRules*_decision__*" > mutants/run.log 2>&1 || (tail -50 mutants/run.log; exit 1)
	$(BIN)/mutmut results | grep -E ": (survived|no tests|suspicious|timeout)" || true
	@$(BIN)/mutmut export-cicd-stats > /dev/null
	@$(BIN)/python -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
		k = s["killed"] + s["timeout"]; n = k + s["survived"] + s["no_tests"] + s["suspicious"] + s["segfault"]; \
		print("mutation score: %d/%d killed (%.1f%%), %d survived, %d without tests" % (k, n, 100 * k / n, s["survived"], s["no_tests"]))'

# The whole product on PostgreSQL (DATABASE_URL) instead of the JSON files: a local
# server in DATA_DIR/postgres from the machine's binaries (apt-get install postgresql),
# on PG_PORT (default 5433) and a Unix socket, supervised with the rest as in `make run`.
# With DATABASE_URL set, that server is used and no local one starts.
.PHONY: run-postgres
run-postgres: install
	@exec $(BIN)/python -m tools.stack run --postgres
