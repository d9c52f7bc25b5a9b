# Modelport. `make run` starts the whole platform; `make test` runs every test.
GO       ?= go
PKGS     := github.com/modelport/modelport/...
SERVICES := deployer scaler router inference-worker billing

.PHONY: all build deps engines run test test-faults test-short screenshots vet fmt tidy bench clean

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

# The real engines that run on this machine's CPU, built from source once into
# .cache/engines/bin (ignored by git) and linked beside bin/modelport, where the
# inference-worker finds them. The tests that run a real engine look there too.
OLLAMA_VERSION ?= v0.17.4
ENGINES_BIN    := .cache/engines/bin

## engines: build Ollama $(OLLAMA_VERSION) (cgo, CPU) into .cache/engines/bin, or reuse it there;
## needs a C/C++ compiler and the Debian packages nlohmann-json3-dev and libstb-dev
engines:
	@mkdir -p $(ENGINES_BIN) bin
	@if $(GO) version -m $(ENGINES_BIN)/ollama 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/ollama/ollama[[:space:]]+$(OLLAMA_VERSION)([[:space:]]|$$)"; then \
		echo "ollama $(OLLAMA_VERSION): $(ENGINES_BIN)/ollama (built already)"; \
	else \
		for h in nlohmann/json.hpp stb/stb_image.h; do \
			echo '#include <'$$h'>' | $${CXX:-c++} -x c++ -fsyntax-only - 2>/dev/null || { \
				echo "make engines: <$$h> is missing: install the Debian packages nlohmann-json3-dev and libstb-dev (and a C++ compiler)"; exit 1; }; \
		done; \
		echo "building ollama $(OLLAMA_VERSION) into $(ENGINES_BIN) (the first build takes several minutes)"; \
		GOWORK=off CGO_ENABLED=1 CGO_CPPFLAGS="-I$(CURDIR)/third_party" GOBIN="$(CURDIR)/$(ENGINES_BIN)" \
			$(GO) install github.com/ollama/ollama@$(OLLAMA_VERSION) || exit 1; \
	fi
	ln -sf ../$(ENGINES_BIN)/ollama bin/ollama

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
test: deps engines vet $(WITH_CLICKHOUSE)
	$(WITH_CLICKHOUSE) $(GO) test -race -count=1 -timeout 20m $(PKGS)

## test-faults: the fault tests alone (the all-in-one killed under load and started again
## on its data, a killed worker mid-stream, a NATS restart, a thousand streaming
## clients, NATS and router deaths on a cluster, a query of death, a
## blackholed instance, a hung stream, a flood of made-up API keys, a ClickHouse outage,
## duplicate and poison events, lost stops, billing replicas starting together, retried
## inserts, late usage after a month closed, and the control plane under five minutes of
## chaos: MODELPORT_CHAOS_DURATION); `make test` runs them too, the chaos for a minute
CHAOS ?= 5m
test-faults: DEPS := test
test-faults: deps engines $(WITH_CLICKHOUSE)
	MODELPORT_CHAOS_DURATION=$(CHAOS) $(WITH_CLICKHOUSE) $(GO) test -race -count=1 -timeout 20m -run 'TestFault|TestMultiNode|TestWorkerKilled|TestChaos|TestControlPlaneFailover' ./cmd/modelport
	$(WITH_CLICKHOUSE) $(GO) test -race -count=1 -timeout 20m -run 'Outage|Poison|Duplicate|Redeliver|DeadLetter|Review2|Review4|Review5|SimulatedMonth' github.com/modelport/modelport/services/billing/...

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
bench: build engines
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
