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
	$(UV) sync --frozen --extra s3  # the s3 extra: tests run object storage against a local moto server
	rm -f .venv/.synced-* && touch $@

env: $(VENV_STAMP)

# The demo's world is the emergent-alignment proof's (tests/test_emergent_proof.py): 48 short sessions, so
# that each of the four training pairs gets sessions of every class under disjoint pairing.
demo: env
	$(UV) run --frozen bindset synth $(DEMO)/raw --sessions 48 --seconds 12 --seed 0 --width 160 --height 120 \
		--depth-size 112 84 --thermal-size 80 60
	$(UV) run --frozen bindset build $(DEMO)/raw $(DEMO)/data --engine beam --stride 1 --val-fraction 0.25
	$(UV) run --frozen bindset report $(DEMO)/data
	$(UV) run --frozen bindset train $(DEMO)/data $(DEMO)/run --preset proof --engine local
	$(UV) run --frozen bindset embed $(DEMO)/data $(DEMO)/run $(DEMO)/emb
	$(UV) run --frozen bindset eval $(DEMO)/emb --split val

test: env
	$(UV) run --frozen pytest -q

lint: env
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

clean:
	rm -rf $(DEMO) .pytest_cache
