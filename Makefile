# Two commands for a newcomer: `make run` (everything on the embedded glyphs benchmark) and `make test`
# (the test suite, then the documentation site under docs/ built with --strict).
VENV ?= .venv
PYTHON ?= python3
# CPU build from the local wheel cache; for a GPU pick the CUDA build from the PyTorch CUDA index, e.g.
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cu126` (README "GPU", docs/gpu-cluster.md).
# TORCH is one requirement (quoted: "torch>=2.1" works); TORCH_INDEX, when set, is pip's --index-url for it.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
CORES ?= all
# The DVC remote that `make push` / `make pull` share datasets, features and models through
# (docs/sharing-howto.md): a local folder by default; any DVC URL (s3://..., ssh://..., https://...) works.
# SCOPE=--project writes .dvc/config (commit it: teammates' clones find the remote); SCOPE=--local
# writes .dvc/config.local (this clone only, e.g. where the share is mounted elsewhere). DVC stores a
# relative path relative to .dvc/ (../../dmlrepro-remote): a clone beside this one finds the same folder.
REMOTE ?= ../dmlrepro-remote
SCOPE ?= --project

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run install fonts test docs docs-serve dvc-repro mlflow-ui clean-results remote push pull

run: install fonts
	snakemake --cores $(CORES)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	# uv resolves and installs the rest in seconds where pip takes minutes; it keeps the torch above
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@

fonts: install fonts/.complete

fonts/.complete:
	bash workflow/scripts/fetch_fonts.sh

# The documentation site (mkdocs.yml, docs/) into site/: --strict fails on a broken link, anchor or
# nav entry. NO_MKDOCS_2_WARNING silences Material's end-of-life banner, not a check.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

# Both suites in two processes (pytest-xdist; --dist loadfile keeps a file, and so its module-scoped
# build, in one process). The integration tests mostly wait on process start-up and I/O, so two files
# at a time fit on two cores beside each other's Snakemake jobs.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests/unit
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=12 tests/integration
	$(MKDOCS) build --strict --site-dir site

docs: install
	$(MKDOCS) build --strict --site-dir site

docs-serve: install
	$(MKDOCS) serve

dvc-repro: install fonts
	dvc repro

# MLflow 3's UI opens experiments on its GenAI view; the workflowType parameter picks the runs view.
mlflow-ui: install
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-results:
	rm -rf results .dmlrepro/checkpoints .snakemake/metadata

remote: install
	@case "$(REMOTE)" in *://*) ;; *) mkdir -p "$(REMOTE)" ;; esac
	dvc remote add $(SCOPE) --default --force storage "$(REMOTE)"
	@dvc remote list

# Upload what dvc.lock records (datasets, features, models); then commit and push git (dvc.lock and the
# metrics, histories and tables under results/), so a clone's commit names exactly what was pushed.
push: install
	dmlrepro push

# Fetch, verify (md5 of every object) and check out what this commit's dvc.lock records, then
# `snakemake --touch`: the pulled files have new modification times, which Snakemake would otherwise
# take for changed inputs and retrain everything; dmlrepro pull has checked that `dvc status` is clean.
# --forceall records Snakemake's metadata for every job, so a later params.yaml change reruns what it should.
pull: install
	dmlrepro pull
	snakemake --touch --forceall --cores 1 --quiet
