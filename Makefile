# The two commands: `make run` (bring up the default datacenter and show it working)
# and `make test` (the whole suite). Both do all set-up first.
PY := .venv/bin/python
KNETLAB := .venv/bin/knetlab
TOPOLOGY ?= topologies/default.yaml

.PHONY: setup run test bench lint clean

setup:
	bash scripts/setup.sh

run: setup
	$(KNETLAB) up --check $(TOPOLOGY)

test: setup
	$(KNETLAB) clean
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(KNETLAB) clean

bench: setup
	$(PY) -m knetlab.bench --out bench-results

lint: setup
	.venv/bin/ruff check knetlab tests

clean:
	-$(KNETLAB) clean
