# Modelport. `make run` starts the whole platform; `make test` runs every test.
GO       ?= go
PKGS     := github.com/modelport/modelport/...
SERVICES := deployer scaler router inference-worker billing

.PHONY: all build deps run test test-faults test-short screenshots vet fmt tidy bench clean

all: build

## build: bin/modelport (all-in-one), one binary per service, and the simulator engine
build:
	@mkdir -p bin
	$(GO) build -o bin/modelport ./cmd/modelport
	@for s in $(SERVICES); do echo "$(GO) build -o bin/$$s ./services/$$s/cmd/$$s"; $(GO) build -o bin/$$s ./services/$$s/cmd/$$s || exit 1; done
	$(GO) build -o bin/modelport-simulator ./services/inference-worker/cmd/modelport-simulator

## deps: install what this machine lacks (Debian packages as root: ClickHouse, Node.js and
## npm, Chromium, the test engine's headers; the npm modules); quiet when all is there.
## `make run` needs only ClickHouse, and runs without it; `make test` needs everything.
deps:
	@scripts/deps $(DEPS)

## run: the all-in-one platform on embedded NATS and a local ClickHouse
run: DEPS := run
run: deps build
	bin/modelport up

# withclickhouse gives a whole test run one private ClickHouse, unless
# MODELPORT_TEST_CLICKHOUSE_ADDR names a running one.
WITH_CLICKHOUSE := bin/withclickhouse
$(WITH_CLICKHOUSE): FORCE
	@mkdir -p bin
	@$(GO) build -o $@ ./libs/chtest/cmd/withclickhouse

## test: install what is missing, vet, then every test with the race detector against
## real NATS, ClickHouse, Node.js and Chromium
test: DEPS := test
test: deps vet $(WITH_CLICKHOUSE)
	$(WITH_CLICKHOUSE) $(GO) test -race -count=1 -timeout 20m $(PKGS)

## test-faults: the fault tests alone (a killed worker mid-stream, a NATS restart, a
## thousand streaming clients, NATS and router deaths on a cluster, a query of death, a
## blackholed instance, a hung stream, a flood of made-up API keys, a ClickHouse outage,
## duplicate and poison events); `make test` runs them too
test-faults: DEPS := test
test-faults: deps $(WITH_CLICKHOUSE)
	$(WITH_CLICKHOUSE) $(GO) test -race -count=1 -timeout 20m -run 'TestFault|TestMultiNode|TestWorkerKilled' ./cmd/modelport
	$(WITH_CLICKHOUSE) $(GO) test -race -count=1 -timeout 20m -run 'Outage|Poison|Duplicate|Redeliver|DeadLetter' github.com/modelport/modelport/services/billing/...

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

## screenshots: refresh docs/screenshots from the console's browser test (the test itself
## writes to build/screenshots, which git ignores); run it when the console changes
screenshots: DEPS := test
screenshots: deps $(WITH_CLICKHOUSE)
	$(WITH_CLICKHOUSE) $(GO) test -count=1 -timeout 10m -run '^TestConsole$$' ./cmd/modelport
	cp build/screenshots/*.png docs/screenshots/

clean:
	rm -rf bin build

FORCE:
