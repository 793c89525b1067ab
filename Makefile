# Two commands: `make run` starts the whole product, `make test` runs every test.
# Both create the virtualenv and install the pinned requirements first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
export DATA_DIR
# The workflow sandbox (the order workflows and the benchmark's floor) imports
# modules again for every run; without a bytecode cache that is a compile each time.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test bench install clean

# With TEMPORAL_ADDRESS set, the worker and web app use that server and no dev
# server starts. Otherwise the dev server starts on TEMPORAL_DEV_IP:TEMPORAL_DEV_PORT
# and the worker and web app are pointed at it (and the UI links at TEMPORAL_UI_PORT).
run: install
	@mkdir -p "$(DATA_DIR)"
	@web="http://$${WEB_HOST:-127.0.0.1}:$${WEB_PORT:-5001}"; \
	if [ -n "$$TEMPORAL_ADDRESS" ]; then \
		echo "TEMPORAL_ADDRESS=$$TEMPORAL_ADDRESS: using that server, not starting a dev server"; \
		echo "Loan form: $$web/  Orders: $$web/orders  (Ctrl+C stops everything)"; \
		exec $(BIN)/honcho start worker web; \
	else \
		export TEMPORAL_ADDRESS="$${TEMPORAL_DEV_IP:-127.0.0.1}:$${TEMPORAL_DEV_PORT:-7233}"; \
		export TEMPORAL_UI_URL="$${TEMPORAL_UI_URL:-http://localhost:$${TEMPORAL_UI_PORT:-8233}}"; \
		echo "Loan form: $$web/  Orders: $$web/orders  Temporal UI: $$TEMPORAL_UI_URL  (Ctrl+C stops everything)"; \
		exec $(BIN)/honcho start; \
	fi

test: install
	$(BIN)/python -m pytest

# Needs `make run` (or another running app and server) in a second terminal.
bench: install
	$(BIN)/python load_test.py --benchmark

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache
