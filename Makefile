# Two commands to start: `make run` (a real job end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: on these machines 2.13.0 is a CPU wheel on local disk; on a
# GPU host the same pin gets PyPI's CUDA build (for 2.13.0: CUDA 13.0, which needs an R580+ driver).
# Override with `make TORCH_SPEC=torch==X.Y.Z`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
# pytest-xdist processes for `make test`: each runs whole test files with its own redis-server and session worker
# (most of a test's time is waiting on processes, so two halve the suite's time on a 2-core machine).
TEST_PROCESSES ?= 2

.PHONY: install run test bench wheelhouse gpu-check down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,onnx]'
	touch $@

run: install  ## embed 2,000 real sentences with all-MiniLM-L6-v2, end to end, offline
	HF_HUB_OFFLINE=1 $(BIN)/hfq demo

test: install  ## the layer contracts (import-linter), then the whole test suite (real redis-server, real workers, tiny models)
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

bench: install  ## hfqueue against the plain alternatives, side by side (writes benchmarks/results/)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/embeddings.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/generation.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reuse.py

wheelhouse: install  ## cp312 wheels of what a bare GPU host lacks (benchmarks/gpu-host-packages.txt), within the 64 MiB it carries
	$(BIN)/python benchmarks/wheelhouse.py

# On the GPU host: its own python3 (the one holding torch); the wheelhouse fills in the rest, torch stays.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=  # e.g. --out DIR (the reports' folder), --skip-bench, --budget SECONDS (480)
gpu-check:  ## every GPU path as a real job on this host's GPUs, then the GPU benchmark (exits 0 saying what it skipped without a GPU)
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

down:  ## stop the embedded redis-server
	$(BIN)/hfq down

clean: down
	rm -rf $(VENV) .hfq results .pytest_cache
