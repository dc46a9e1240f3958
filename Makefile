# The README's commands. `make demo` on a fresh clone: venv, install from the lock file, build the index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Ports and the data dir are variables: `make serve API_PORT=8100`, `RAG_DATA_DIR=/tmp/demo make dagster`.
HOST ?= 127.0.0.1
DAGSTER_PORT ?= 3000
API_PORT ?= 8000
MILVUS_PORT ?= 19530
export RAG_DATA_DIR ?= .rag_data
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo install test test-fast walkthrough lint dagster serve milvus up down lock clean

demo: install  ## first run: index the bundled sample corpus with embedded defaults
	$(BIN)/rag index

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

# Most tests wait on subprocesses, servers and Dagster runs: two workers keep both cores busy (TEST_WORKERS=0: one
# process). A module runs whole on one worker, so its fixtures are built once.
TEST_WORKERS ?= 2
test: install  ## the suite: unit + integration against Milvus Lite, Dagster, PostgreSQL (the walk-through apart)
	$(BIN)/pytest -q -ra -m "not walkthrough" --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

walkthrough: install  ## the README's command blocks, run in order on a fresh copy (scripts/walkthrough.py)
	$(BIN)/pytest -q -ra -m walkthrough

lint: install
	$(BIN)/ruff check rag_core rag_assets rag_serving evals tests

dagster: install  ## the Dagster UI on http://$(HOST):$(DAGSTER_PORT) (sensor and schedules start with it); honours RAG_DATA_DIR
	DAGSTER_HOME=$${DAGSTER_HOME:-$(abspath $(RAG_DATA_DIR))/dagster} $(BIN)/python -c "from rag_assets.cli import prepare_dagster_home; from rag_core.settings import settings_or_exit; prepare_dagster_home(settings_or_exit())"
	DAGSTER_HOME=$${DAGSTER_HOME:-$(abspath $(RAG_DATA_DIR))/dagster} $(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(DAGSTER_PORT)

serve: install  ## the query API and web page on http://$(HOST):$(API_PORT)
	$(BIN)/rag-serve serve --host $(HOST) --port $(API_PORT)

milvus: install  ## share the embedded index between processes: then export MILVUS_URI=http://$(HOST):$(MILVUS_PORT)
	$(BIN)/milvus-lite server --data-dir $(RAG_DATA_DIR)/milvus.db --host $(HOST) --port $(MILVUS_PORT)

up: install  ## the production profile as real processes: PostgreSQL storage, daemon, MLflow server, Milvus endpoint, API
	$(BIN)/python scripts/stack.py up $(STACK_ARGS)

down:  ## stop what `make up` started; it says what it leaves (the PostgreSQL databases, the data dir)
	$(BIN)/python scripts/stack.py down $(STACK_ARGS)

lock:  ## re-pin the whole tree after editing requirements.in (CUDA-only wheels dropped)
	$(BIN)/uv pip compile requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock.tmp
	grep -vE '^(nvidia-|triton==|cuda-bindings|cuda-pathfinder|cuda-toolkit)' requirements.lock.tmp > requirements.lock
	rm requirements.lock.tmp

clean:
	rm -rf .rag_data
