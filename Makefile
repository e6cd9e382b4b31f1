# rampart — the two commands a newcomer needs: `make lab` and `make test` (run as root on Debian/Ubuntu).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
ENV ?= lab
# The environment's ansible-vault secrets: the lab makes its own password and file (scripts/bootstrap-secrets.py).
VAULT_ID := --vault-id $(ENV)@scripts/vault-pass-client.py
PLAYBOOK := $(BIN)/ansible-playbook -i inventory/$(ENV) $(VAULT_ID)

.PHONY: drill setup secrets lab lab-up converge summary lab-down test test-fast test-lab lint unit bench lock

setup:                       ## Debian packages + pinned virtualenv (idempotent)
	@scripts/setup.sh

lab: setup lab-up converge summary   ## build the lab, converge site.yml, print what runs where

lab-up: setup
	@echo "== lab up"; $(BIN)/rampart --env $(ENV) lab up

secrets:
	@[ "$(ENV)" != lab ] || $(BIN)/python scripts/bootstrap-secrets.py --env $(ENV)

converge: secrets
	@echo "== converge playbooks/site.yml"; $(PLAYBOOK) playbooks/site.yml

summary:
	@$(BIN)/rampart --env $(ENV) lab summary

lab-down: setup
	@$(BIN)/rampart --env $(ENV) lab down

test: setup test-fast test-lab   ## fast tier, then the lab tier

test-fast: lint unit         ## no lab: lint, syntax, unit tests

lint: setup
	@echo "== ruff"; $(BIN)/ruff check infra plugins tests bot
	@echo "== yamllint"; $(BIN)/yamllint -s .
	@echo "== ansible syntax"; $(BIN)/ansible-playbook -i inventory/$(ENV) --syntax-check playbooks/*.yml playbooks/drills/*.yml >/dev/null && echo ok
	@echo "== ansible-lint (production profile)"; $(BIN)/ansible-lint --offline -q --profile production

unit: setup
	@echo "== unit tests (topology, rendering, Pulumi mocks; two workers, one test file per worker at a time)"
	@scripts/pytest.sh -n2 --dist=loadfile tests/unit tests/pulumi
	@echo "== bot tests (core, simulator faults, SQLite + PostgreSQL)"; cd bot && ../scripts/pytest.sh tests

test-lab: setup              ## lab up, converge twice (idempotence), testinfra suites, lab down
	@scripts/test-lab.sh

drill: setup                 ## recovery drills on the running lab: make drill [NAME=a|b|c|d|e|f|all]
	@$(BIN)/rampart --env $(ENV) drill $(or $(NAME),all)

bench: setup                 ## print the figures (not timed tests)
	@scripts/bench.sh

lock:                        ## refresh requirements.lock from the current virtualenv
	$(BIN)/pip freeze --exclude-editable | grep -v '^rampart' > requirements.lock
