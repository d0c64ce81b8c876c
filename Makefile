# Two commands for a newcomer: `make run` (everything on the embedded glyphs benchmark) and `make test`.
VENV ?= .venv
PYTHON ?= python3
# CPU build from the local wheel cache; for a GPU pick the CUDA build, e.g. TORCH="torch==2.13.0" with
# the PyTorch CUDA index (see README).
TORCH ?= torch==2.13.0
CORES ?= all

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run install fonts test dvc-repro mlflow-ui clean-results

run: install fonts
	snakemake --cores $(CORES)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

fonts: install fonts/.complete

fonts/.complete:
	bash workflow/scripts/fetch_fonts.sh

test: install
	$(BIN)/python -m pytest -q

dvc-repro: install fonts
	dvc repro

# MLflow 3's UI opens experiments on its GenAI view; the workflowType parameter picks the runs view.
mlflow-ui: install
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-results:
	rm -rf results .dmlrepro/checkpoints .snakemake/metadata
