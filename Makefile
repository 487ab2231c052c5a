# medsilo: `make run` sets everything up and runs the default federation; `make test` runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# A new .venv is a link to an environment kept outside the tree: `flwr run .` walks every file
# under the app folder before it packs the app, and a venv's 50,000 files cost each run about 5 s.
VENV_STORE ?= $(HOME)/.cache/medsilo/venv-$(shell printf '%s' '$(CURDIR)' | cksum | cut -d' ' -f1)
HOSPITALS ?= 4
# The default run: the run-config defaults (kept Adam state, logit-adjusted loss, warm-up then cosine decay) on
# the shipped sample, ResNet-18 at 48 px in 6 rounds of 8 batches per hospital (about 6 epochs of the sample), a
# length chosen on a validation split of the sample's train/ (see README). Six rounds are too few for server
# momentum to pay off (central accuracy 0.725 with it, 0.767 without, seed 42), so the demo uses plain FedAvg.
# One CPU per simulated hospital, so two train at once on a 2-core machine.
DEMO_CONFIG := image-size=48 num-server-rounds=6 local-steps=8 lr-warmup-rounds=1 strategy='fedavg'
# Your own keys, e.g. RUN_CONFIG="num-server-rounds=20"; they override DEMO_CONFIG.
RUN_CONFIG ?=

# Flower phones home and, without the last flag, reinstalls the app's dependencies
# (torch included) with `uv sync` on every run. Nothing may be fetched at run time.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
# `flwr run` starts `flower-superlink`, which must be on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install system-deps run test test-fast lint docs stop clean uninstall

$(VENV)/.installed: pyproject.toml
	test -e $(VENV) || { rm -f $(VENV); mkdir -p "$(VENV_STORE)" && ln -s "$(VENV_STORE)" $(VENV) || true; }
	test -x $(BIN)/python || $(PYTHON) -m venv "$$(readlink -f $(VENV))"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

install: system-deps $(VENV)/.installed

# Debian tools that some tests use (report screenshots, docker/ checks, the test PKI). As root
# with apt-get, install whatever is missing; otherwise say which tests will be skipped. Never fails.
SYSTEM_TOOLS := chromium docker-compose ssh-keygen openssl
SYSTEM_PACKAGES := chromium docker-compose openssh-client openssl
missing_tools = for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || printf '%s ' $$t; done

system-deps:
	@missing="$$($(missing_tools))"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: installing $(SYSTEM_PACKAGES) (missing: $${missing% })"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 \
			|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; } \
			|| true; \
		missing="$$($(missing_tools))"; \
	fi; \
	if [ -n "$$missing" ]; then echo "system-deps: missing $${missing% }: the tests that need them will be skipped"; fi

# `flwr run --stream` exits 0 whatever the run did; `medsilo outcome` reads how the run ended (the record its
# ServerApp writes under runs/.outcomes/) and fails, with the run's own error line last, unless it completed.
run: install
	@mkdir -p runs
	flwr run . --federation-config "num-supernodes=$(HOSPITALS) client-resources-num-cpus=1" --stream \
		--run-config "data-root='$(CURDIR)/data/samples/brain-mri' output-dir='$(CURDIR)/runs' $(DEMO_CONFIG)" \
		--run-config "$(RUN_CONFIG)" 2>&1 | tee runs/.last-flwr-run.log
	@echo "The local SuperLink keeps running for 'flwr ls' and 'flwr log'; 'make stop' ends it."
	@$(BIN)/medsilo outcome --log runs/.last-flwr-run.log --output-dir '$(CURDIR)/runs'

test: install
	$(BIN)/python -m pytest

# The unit tests only (no `flwr run`, no SuperLink, no browser, no killed processes): the inner loop, under 2 minutes.
test-fast: install
	$(BIN)/python -m pytest --ignore=tests/integration -m "not slow"

lint: install
	$(BIN)/ruff check .

# The docs site, built offline into site/ (strict: a warning or a broken link fails it).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

stop:
	-pkill -f "flower-superlin[k] .*--port 39091" && echo "local SuperLink stopped"

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Remove the environment too: the folder .venv links to (under ~/.cache/medsilo), then the link.
uninstall: clean
	if [ -L $(VENV) ]; then rm -rf "$$(readlink -f $(VENV))" && rm -f $(VENV); else rm -rf $(VENV); fi
