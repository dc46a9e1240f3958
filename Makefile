# The README's commands. `make demo` on a fresh clone: venv, install from the lock file, build the index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo install test test-fast lint dagster serve milvus up down lock clean

demo: install  ## first run: index the bundled sample corpus with embedded defaults
	$(BIN)/rag index

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

test: install  ## the whole suite: unit + integration against Milvus Lite, Dagster, PostgreSQL
	$(BIN)/pytest -q -ra

test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check rag_core rag_assets rag_serving evals tests

dagster: install  ## the Dagster UI on http://127.0.0.1:3000 (sensor and schedules start with it)
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.rag_data/dagster} $(BIN)/python -c "from rag_assets.cli import prepare_dagster_home; from rag_core.settings import get_settings; prepare_dagster_home(get_settings())"
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.rag_data/dagster} $(BIN)/dagster dev -w workspace.yaml

serve: install  ## the query API and web page on http://127.0.0.1:8000
	$(BIN)/rag-serve serve --host 127.0.0.1 --port 8000

milvus: install  ## share the embedded index between processes: then export MILVUS_URI=http://127.0.0.1:19530
	$(BIN)/milvus-lite server --data-dir $${RAG_DATA_DIR:-.rag_data}/milvus.db --host 127.0.0.1 --port 19530

up: install  ## the production profile as real processes: PostgreSQL storage, daemon, MLflow server, Milvus endpoint, API
	$(BIN)/python scripts/stack.py up $(STACK_ARGS)

down:  ## stop what `make up` started
	$(BIN)/python scripts/stack.py down $(STACK_ARGS)

lock:  ## re-pin the whole tree after editing requirements.in (CUDA-only wheels dropped)
	$(BIN)/uv pip compile requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock.tmp
	grep -vE '^(nvidia-|triton==|cuda-bindings|cuda-pathfinder|cuda-toolkit)' requirements.lock.tmp > requirements.lock
	rm requirements.lock.tmp

clean:
	rm -rf .rag_data
