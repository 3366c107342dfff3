# The two commands a newcomer needs: `make demo` and `make test` (both set up first).
# DISTRO=jazzy runs either on ROS 2 Jazzy instead of Kilted (its own venv, build and env file).
SHELL := /bin/bash
DISTRO ?= kilted
ENV_FILE := $(if $(filter kilted,$(DISTRO)),env.sh,env-$(DISTRO).sh)
ENV := source ./$(ENV_FILE)

.PHONY: setup demo test image clean

setup:
	@VLA_ROS_DISTRO=$(DISTRO) bash scripts/setup.sh

demo: setup
	@$(ENV) && python -m vla_test_pipeline.demo $(DEMO_ARGS)

# Lint, then the oldest Python the sources must import on (3.10: JetPack 6, Humble), then the tests.
VERMIN := vermin --no-tips -q -t=3.10- --violations --eval-annotations --backport typing

test: setup
	@$(ENV) && ruff check . && $(VERMIN) vla_inference vla_test_pipeline/vla_test_pipeline scripts launch test \
		&& python -m pytest $(PYTEST_ARGS)

# The container image (docker/Dockerfile) built and smoke-checked with podman or docker.
image:
	@bash docker/build.sh

clean:
	rm -rf build install log env.sh .venv build-jazzy install-jazzy env-jazzy.sh .venv-jazzy
