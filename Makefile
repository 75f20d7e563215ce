# Two entry points, both doing all set-up on a fresh machine:
#   make serve   install (serving only), train a quick model if none is published, serve on :8000
#   make test    install (with the test tools), lint, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SIMCLR_HOME ?= artifacts
# The offline copy of CIFAR-10 when this checkout sits beside ../shared; torchvision's download otherwise.
SIMCLR_DATA ?= $(if $(wildcard ../shared/datasets/cifar10-jpeg/train),../shared/datasets/cifar10-jpeg,cifar10)
HOST ?= 0.0.0.0
PORT ?= 8000
# The versions the build machines carry; the package itself only sets floors.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev browser serve quick-model lint test clean
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# What serving needs, nothing test-only.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet $(TORCH_PINS) -e .
	touch $@

# The same plus the dev extra (pytest, httpx, selenium, ruff).
$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet $(TORCH_PINS) -e '.[dev]'
	touch $@

quick-model: install
	@if [ -s "$(SIMCLR_HOME)/CURRENT" ]; then \
		echo "model $$(cat $(SIMCLR_HOME)/CURRENT) is published; not training"; \
	else \
		$(BIN)/simclr refresh --preset quick --data "$(SIMCLR_DATA)" --home "$(SIMCLR_HOME)"; \
	fi

serve: quick-model
	$(BIN)/simclr serve --home "$(SIMCLR_HOME)" --host $(HOST) --port $(PORT)

# The web-page test drives Debian's Chromium (test tools' own browser downloads fail offline).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing Debian's chromium and chromium-driver for the web-page test"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }

lint: install-dev
	$(BIN)/ruff check .

test: lint browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info
