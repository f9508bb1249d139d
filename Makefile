# One entry point for people and CI. Target names are a contract (README, .ci/run, docs).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
# The broker of the integration tier: 3.10 (the host's Debian package) or 4.0 (Debian 13's,
# run from a trixie root: hack/rabbitmq4.sh). `make test` always uses 3.10.
RABBITMQ ?= 3.10
RABBITMQ_SCRIPT_3.10 := hack/rabbitmq.sh
RABBITMQ_SCRIPT_4.0 := hack/rabbitmq4.sh
RABBITMQ_SCRIPT := $(RABBITMQ_SCRIPT_$(RABBITMQ))
export PATH := $(CURDIR)/.cluster/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv tools cluster-up cluster-down rabbitmq-up rabbitmq-down prometheus-up \
        prometheus-down lint test test-unit test-integration test-e2e test-lowest bench demo down \
        status images node-up node-down rabbitmq4-up rabbitmq4-down rabbitmq-cluster-up rabbitmq-cluster-down test-rabbitmq4 chaos

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

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

images: ## Build roger-worker, roger-operator and the example worker here (podman, no registry); print sizes
	bash hack/images.sh build

node-up: cluster-up ## A real node beside the kwok nodes: kubelet + containerd + runc, the images loaded
	bash hack/node.sh up

node-down: ## Stop the real node (its Pods' containers, containerd, kubelet)
	bash hack/node.sh down

rabbitmq-up: ## Start RabbitMQ on 127.0.0.1:5672 (guest/guest)
	bash hack/rabbitmq.sh up

rabbitmq-down: ## Stop RabbitMQ
	bash hack/rabbitmq.sh down

rabbitmq4-up: ## Start RabbitMQ 4.0 on 127.0.0.1:5673 (from a cached trixie root, under chroot)
	bash hack/rabbitmq4.sh up

rabbitmq4-down: ## Stop RabbitMQ 4.0
	bash hack/rabbitmq4.sh down

rabbitmq-cluster-up: ## 3-node cluster on 127.0.0.1:5681-5683 (RABBITMQ=4.0: 5691-5693)
	ROGER_CLUSTER_RABBITMQ=$(RABBITMQ) bash hack/rabbitmq-cluster.sh up

rabbitmq-cluster-down: ## Stop the 3-node cluster and delete its state (RABBITMQ=4.0 for 4.0)
	ROGER_CLUSTER_RABBITMQ=$(RABBITMQ) bash hack/rabbitmq-cluster.sh down

lint: $(PY) ## ruff, mypy and the import-linter contracts
	$(VENV)/bin/ruff check worker operator tests bench hack roger_devtools
	$(VENV)/bin/ruff format --check worker operator tests bench hack roger_devtools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

chaos: $(PY) rabbitmq-cluster-up ## Fault-injection accounting run on the 3-node cluster (CHAOS_JOBS, CHAOS_DURATION, CHAOS_SEED)
	ROGER_CLUSTER_RABBITMQ=$(RABBITMQ) $(PY) -m roger_devtools.chaos

# `make test` runs the tests not marked `exclusive` in three pytest sessions side by side, the
# kube stream (e2e, images), the broker stream (integration, unit) and the clock stream (e2e
# modules that mostly wait: Schedule ticks, Partition deletion, autoscaling), then the
# exclusive ones alone; both phases always run, and it fails if either did
# (roger_devtools/test_streams.py). It first deletes what earlier runs of this checkout
# left in the broker (roger_devtools/broker_sweep.py): left to pile up, they made RabbitMQ
# use two thirds of a run's CPU.
# TEST_STREAMS=1 runs the first phase as one session, one test at a time.
TEST_STREAMS ?= 3
test: $(PY) rabbitmq-up cluster-up lint ## The whole suite: lint, unit, integration and e2e tests (three streams side by side, then the exclusive ones alone)
	@status=0; \
	$(PY) -m roger_devtools.test_streams --streams $(TEST_STREAMS) -m "not exclusive" --durations=30 || status=$$?; \
	$(PY) -m pytest tests -m exclusive --durations=10 || { rc=$$?; [ $$status -ne 0 ] || status=$$rc; }; \
	exit $$status

test-unit: $(PY) tools ## Unit tests only (no services; the chart tests need helm from tools)
	$(PY) -m pytest tests -m unit

test-integration: $(PY) ## Integration tier on RabbitMQ 3.10, or 4.0 with RABBITMQ=4.0
	@test -n "$(RABBITMQ_SCRIPT)" || { echo "RABBITMQ=$(RABBITMQ): expected 3.10 or 4.0" >&2; exit 2; }
	bash $(RABBITMQ_SCRIPT) up
	ROGER_TEST_RABBITMQ=$(RABBITMQ) $(PY) -m pytest tests -m integration $(PYTEST_ARGS)

# The cluster tests start a 4.0 cluster (ROGER_CLUSTER_RABBITMQ=4.0 hack/rabbitmq-cluster.sh).
test-rabbitmq4: ## Integration tier on RabbitMQ 4.0 (what differs from 3.10 is asserted by tests)
	$(MAKE) test-integration RABBITMQ=4.0

test-lowest: $(PY) rabbitmq-up tools ## Unit and integration tests with every dependency at its floor
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
	-bash hack/node.sh status
	-bash hack/rabbitmq.sh status
	-bash hack/rabbitmq4.sh status
	-bash hack/rabbitmq-cluster.sh status
	-ROGER_CLUSTER_RABBITMQ=4.0 bash hack/rabbitmq-cluster.sh status
	-bash hack/prometheus.sh status

down: ## Stop everything the project started
	-bash hack/demo-down.sh
	bash hack/node.sh down
	bash hack/cluster.sh down
	bash hack/rabbitmq-cluster.sh down
	ROGER_CLUSTER_RABBITMQ=4.0 bash hack/rabbitmq-cluster.sh down
	bash hack/rabbitmq4.sh down
	bash hack/rabbitmq.sh down
