# Developer and CI entry points; `make install` sets the machine up (idempotent).

PYTHON := .venv/bin/python
PYTEST := $(PYTHON) -m pytest -q -p no:cacheprovider
KAFKA_PORT ?= 9092

.PHONY: install test unit chaos kafka-up kafka-down demo clean

install:
	bash scripts/bootstrap.sh

test: install
	$(PYTEST)

unit: install
	$(PYTEST) -m "not integration" --ignore=tests/chaos --ignore=tests/integration

# The failure tests: kill -9, failover, broker restart, fuzzing, TLS. Also part of `make test`.
chaos: install
	$(PYTEST) tests/chaos

kafka-up: install
	.venv/bin/kpimon kafka up --port $(KAFKA_PORT)

kafka-down:
	.venv/bin/kpimon kafka down --port $(KAFKA_PORT)

demo: install
	.venv/bin/kpimon demo

# Removes broker data dirs (not the jars in .cache/kafka/libs); a running broker's dir is kept.
clean:
	@for dir in .cache/kafka/*/; do \
	  [ -d "$$dir" ] && [ "$$(basename "$$dir")" != libs ] || continue; \
	  if [ -f "$$dir/broker.pid" ] && kill -0 "$$(cat "$$dir/broker.pid")" 2>/dev/null; then \
	    echo "kept $$dir: its broker is still running (stop it with make kafka-down)"; \
	  else \
	    rm -rf "$$dir" && echo "removed $$dir"; \
	  fi; \
	done

# Benchmarks (not tests): throughput vs a raw consumer, latency to Slack, memory, scaling.
# Rewrites docs/benchmarks.md; BENCH_ARGS=--quick for a short run. See bench/run.py.
.PHONY: bench
bench: install
	$(PYTHON) -m pip install -q -r bench/requirements.txt
	$(PYTHON) bench/run.py $(BENCH_ARGS)
