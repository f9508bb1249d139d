# One entry point for people and CI. Target names are a contract (README, .ci/run, docs).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.cluster/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv tools cluster-up cluster-down rabbitmq-up rabbitmq-down prometheus-up \
        prometheus-down lint test test-unit test-integration test-e2e test-lowest bench demo down \
        status

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(PY): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[events,operator]' --group dev
	@touch $(PY)

venv: $(PY) ## Python virtualenv with the project and its test tools

tools: ## Build (or reuse) the control-plane binaries from Go modules
	bash hack/tools.sh

cluster-up: tools ## Start etcd, kube-apiserver, controllers, scheduler and kwok on 127.0.0.1
	bash hack/cluster.sh up

cluster-down: ## Stop the local cluster, leaving no process behind
	bash hack/cluster.sh down

rabbitmq-up: ## Start RabbitMQ on 127.0.0.1:5672 (guest/guest)
	bash hack/rabbitmq.sh up

rabbitmq-down: ## Stop RabbitMQ
	bash hack/rabbitmq.sh down

lint: $(PY) ## ruff, mypy and the import-linter contracts
	$(VENV)/bin/ruff check worker operator tests bench hack
	$(VENV)/bin/ruff format --check worker operator tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(PY) rabbitmq-up cluster-up lint ## The whole suite: lint, unit, integration and e2e tests
	$(PY) -m pytest tests

test-unit: $(PY) ## Unit tests only (no services)
	$(PY) -m pytest tests -m unit

test-lowest: $(PY) rabbitmq-up ## Unit and integration tests with every dependency at its floor
	bash hack/test-lowest.sh

bench: $(PY) rabbitmq-up ## Benchmarks (not tests): prints ratios against peers
	$(PY) bench/run.py

demo: $(PY) rabbitmq-up cluster-up ## The one-command tour of the whole system
	$(PY) hack/demo.py

prometheus-up: ## Start Prometheus on 127.0.0.1:9090 (loopback targets, Roger's alert rules)
	bash hack/prometheus.sh up

prometheus-down: ## Stop Prometheus
	bash hack/prometheus.sh down

status: ## What is running
	-bash hack/cluster.sh status
	-bash hack/rabbitmq.sh status
	-bash hack/prometheus.sh status

down: ## Stop everything the project started
	-bash hack/demo-down.sh
	bash hack/cluster.sh down
	bash hack/rabbitmq.sh down
