# make run · make test · make bench — each creates .venv on first use (under a minute with uv),
# and reuses it afterwards (reinstalling only when pyproject.toml or constraints.txt change).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: run test test-fast bench lint format clean browser fonts
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# uv installs the same pinned set as pip, from the sources pip is configured with, in about a
# sixth of the time (torch's wheel alone is several GB); where uv cannot be had, pip does it.
# Both leave compiled bytecode: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise
# compile torch's sources again in every process (8 s instead of 3 s to import it here).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9 >/dev/null 2>&1; then \
	  echo "installing the tested set (constraints.txt) with uv"; \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) --cache-dir $(VENV)/.uv-cache --compile-bytecode \
	    --index-strategy unsafe-best-match $$($(PYTHON) tools/pip_sources.py) \
	    -c constraints.txt -e '.[dev]' \
	  || $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'; \
	else \
	  $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'; \
	fi
	@touch $(STAMP)

# The demo: a CIFAR-style ResNet-20 trained on the embedded handwritten digits (about 2 minutes
# on 2 CPU cores), then the run's summary and the commands to try next.
run: $(STAMP)
	$(VENV)/bin/resnetlab train

# The report and web-page tests drive Debian's chromium headless; install it when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium + chromium-driver for the browser tests"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# Chinese/Japanese/Korean class names (the herbal-medicine data) in the plots and the report
# page need a CJK font; install Debian's Noto Sans CJK, the one they prefer, when missing.
fonts:
	@fc-list :lang=zh family 2>/dev/null | grep -q 'Noto Sans CJK' || { \
	  echo "installing Debian's fonts-noto-cjk for CJK class names in plots and reports"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq fonts-noto-cjk; }

test: $(STAMP) browser fonts
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	@$(PY) -m compileall -q src
	$(VENV)/bin/pytest

# Everything but the journeys and the Chromium tests (marked slow): the quick loop while editing.
# `make test` runs them all; `pytest --lf` re-runs only what failed last time.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	@$(PY) -m compileall -q src
	$(VENV)/bin/pytest -m "not slow"

# The serving peers of benchmarks/serve_load.py (the bench extra: litserve, which brings
# uvicorn[standard]) on top of the tested set, for `make bench` only: `make test` and a fresh
# venv (CI) never install them, so the tests run the plain uvicorn of resnetlab[serve]. (In a
# venv that did run `make bench`, uvicorn then picks uvloop and httptools, tests included.)
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	@echo "installing the serving peers (the bench extra, constraints.txt)"
	@if test -x $(VENV)/bin/uv; then \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) --cache-dir $(VENV)/.uv-cache --compile-bytecode \
	    --index-strategy unsafe-best-match $$($(PYTHON) tools/pip_sources.py) \
	    -c constraints.txt -e '.[dev,bench]' \
	  || $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'; \
	else \
	  $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'; \
	fi
	@touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks tools
	$(VENV)/bin/ruff format src tests benchmarks tools

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
