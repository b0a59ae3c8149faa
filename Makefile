# The two fresh-machine commands (see README): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup setup-test system-deps toolchains demo convert-demo test test-arm64 lint bench coverage clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests drive for real: Mosquitto (broker), Chromium (browser bundle), Node (TF.js), QEMU (x86 CPU classes for int8).
system-deps:
	bash scripts/system-deps.sh

# Isolated converter environments, cached under $${EDGEKIT_HOME:-~/.cache/edgekit}/toolchains.
toolchains: setup
	$(BIN)/edgekit toolchain install all

setup-test: setup system-deps toolchains

# The demo needs the base install plus the embedded MQTT broker: not the dev extra (torch, test tools).
DEMO_STAMP := $(VENV)/.demo-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[broker]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/edgekit demo

# The foundation's main job: the bundled sample to all four targets, every precision, validated.
convert-demo: setup toolchains
	$(BIN)/edgekit convert sample:digits -q none -q fp16 -q int8-dynamic -q int8 --max-drop 1.0 --out out/convert

test: setup-test
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The agent on aarch64: a Debian arm64 rootfs (debootstrap, QEMU user mode + binfmt; needs root) with
# the agent installed from aarch64 wheels, enrolled with a fleet on the host. Slow: ~12 min the first time
# (rootfs ~7 min), ~2 min once cached under $${EDGEKIT_HOME:-~/.cache/edgekit}/arm64; not in `make test`.
test-arm64: setup
	EDGEKIT_ARM64=1 bash scripts/system-deps.sh
	$(BIN)/edgekit toolchain install tflite
	bash scripts/arm64/prepare.sh $(BIN)/python
	$(BIN)/pytest -q -m arm64 tests/arm64

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup toolchains
	$(BIN)/python bench/convert.py

# Conformance matrix: ONNX's node tests (one per op) through every target -> docs/coverage.{md,json}.
coverage: setup toolchains
	$(BIN)/python -m converters.coverage --out docs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
