# Two commands do all set-up on a fresh machine that has only python3 and make:
#   make demo   - runs the main job on its embedded defaults
#   make test   - runs the whole test suite (what CI runs)
SHELL := /bin/bash
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
VENV_STAMP := .venv/.synced-$(shell (cat pyproject.toml uv.lock | sha256sum | cut -c1-16) 2>/dev/null)
DEMO ?= demo

.PHONY: demo test lint env clean

$(TOOLS)/bin/uv:
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

$(VENV_STAMP): pyproject.toml uv.lock | $(if $(shell command -v uv 2>/dev/null),,$(TOOLS)/bin/uv)
	$(UV) sync --frozen
	rm -f .venv/.synced-* && touch $@

env: $(VENV_STAMP)

demo: env
	$(UV) run --frozen bindset synth $(DEMO)/raw --sessions 8 --seconds 30 --seed 0
	$(UV) run --frozen bindset build $(DEMO)/raw $(DEMO)/data --engine beam
	$(UV) run --frozen bindset report $(DEMO)/data

test: env
	$(UV) run --frozen pytest -q

lint: env
	$(UV) run --frozen ruff check .

clean:
	rm -rf $(DEMO) .pytest_cache
