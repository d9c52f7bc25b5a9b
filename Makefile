# Modelport. `make run` starts the whole platform; `make test` runs every test.
GO       ?= go
PKGS     := github.com/modelport/modelport/...
SERVICES := deployer scaler router inference-worker billing

.PHONY: all build run test test-faults test-short vet fmt tidy bench clean

all: build

## build: bin/modelport (all-in-one), one binary per service, and the simulator engine
build:
	@mkdir -p bin
	$(GO) build -o bin/modelport ./cmd/modelport
	@for s in $(SERVICES); do echo "$(GO) build -o bin/$$s ./services/$$s/cmd/$$s"; $(GO) build -o bin/$$s ./services/$$s/cmd/$$s || exit 1; done
	$(GO) build -o bin/modelport-simulator ./services/inference-worker/cmd/modelport-simulator

## run: the all-in-one platform on embedded NATS and a local ClickHouse
run: build
	MODELPORT_CLICKHOUSE_INSTALL=$${MODELPORT_CLICKHOUSE_INSTALL:-1} bin/modelport up

## test: vet, then every test with the race detector (needs ClickHouse, Node and Chromium; see README)
test: vet clients/node/node_modules tests/browser/node_modules
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# The official openai npm package, for the client compatibility test.
clients/node/node_modules: clients/node/package-lock.json
	npm ci --prefix clients/node --no-audit --no-fund
	@touch $@

# playwright-core, which drives Chromium in the console's browser test.
tests/browser/node_modules: tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund
	@touch $@

## test-faults: the fault tests alone (a killed worker mid-stream, a NATS restart, a
## thousand streaming clients, NATS and router deaths on a cluster, a ClickHouse outage,
## duplicate and poison events, and the control plane under five minutes of chaos:
## MODELPORT_CHAOS_DURATION); `make test` runs them too, the chaos for a minute
CHAOS ?= 5m
test-faults:
	MODELPORT_CHAOS_DURATION=$(CHAOS) $(GO) test -race -count=1 -timeout 20m -run 'TestFault|TestMultiNode|TestWorkerKilled|TestChaos|TestControlPlaneFailover' ./cmd/modelport
	$(GO) test -race -count=1 -timeout 20m -run 'Outage|Poison|Duplicate|Redeliver|DeadLetter' github.com/modelport/modelport/services/billing/...

## test-short: the tests that need no binaries built
test-short:
	$(GO) test -short -count=1 $(PKGS)

vet:
	@test -z "$$(gofmt -l libs services cmd deploy)" || { echo "gofmt needed:"; gofmt -l libs services cmd deploy; exit 1; }
	$(GO) vet $(PKGS)

fmt:
	gofmt -w libs services cmd deploy

## tidy: go mod tidy in every module
tidy:
	@for m in libs $(addprefix services/,$(SERVICES)) cmd/modelport deploy; do (cd $$m && GOWORK=off $(GO) mod tidy) || exit 1; done

## bench: the benchmark suite; rewrites docs/benchmarks.md
bench: build
	bin/modelport bench -requests 3000 -out docs/benchmarks.md

clean:
	rm -rf bin
