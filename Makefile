# The two commands a newcomer needs: `make demo` and `make test` (both set up first).
SHELL := /bin/bash
ENV := source ./env.sh

.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) && python -m vla_test_pipeline.demo $(DEMO_ARGS)

test: setup
	@$(ENV) && ruff check . && python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build install log env.sh .venv
