# ENSGate. `make run` starts a local demo, `make test` runs every test.

GO        ?= go
BIN       := bin/ensgate
TOOLS     := $(CURDIR)/.tools
CADDY_VERSION := v2.11.9
# Fuzz targets that `make test` runs briefly: package:target. A count, not a
# duration: a timed run can end in "context deadline exceeded" on a busy machine.
FUZZ_TARGETS ?= ./ews:FuzzParseSendNotification ./ews:FuzzParseResponses ./ews:FuzzParseFingerprint ./kcd:FuzzUPNFromSAN ./ewsproxy:FuzzGuard
FUZZ_TIME    ?= 40000x

.PHONY: build demo-tools run test test-deps unit fuzz lint bench xcaddy tools clean

build:
	$(GO) build -o $(BIN) ./cmd/ensgate

## run: the local demo (throwaway PostgreSQL under .run/ unless DATABASE_URL is
## set, Exchange simulator, push sinks, a scripted device and mail).
run: build demo-tools
	./scripts/run.sh

demo-tools:
	$(GO) build -o bin/ ./cmd/ewssim ./cmd/graphsim ./cmd/pushsink ./cmd/ensdemo

## test: lint, every unit and integration test (real PostgreSQL, real KDCs),
## brief fuzzing. On a fresh Debian machine it first installs what the tests
## need (as root), or names it.
test: test-deps lint build demo-tools unit fuzz

test-deps:
	@bash scripts/install-test-deps.sh

unit:
	ENSGATE_BIN=$(CURDIR)/$(BIN) ENSGATE_REQUIRE_POSTGRES=1 ENSGATE_REQUIRE_KDC=1 ENSGATE_REQUIRE_NGINX=1 $(GO) test -race -count=1 ./...

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($(FUZZ_TIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZ_TIME) $$pkg || exit 1; \
	done

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt -w needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

## bench: end-to-end figures (bounded counts, loopback peers), printed per benchmark.
BENCH_COUNT ?= 10000x
bench: build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCH_COUNT) -count=1 ./...

## xcaddy: proves `xcaddy build --with github.com/ensgate/ensgate=.` gives an equivalent binary.
# "|off": when the module proxy refuses to list our unpublished module, Go
# falls back to the local replacement instead of failing.
xcaddy: tools build
	GOPROXY="$$($(GO) env GOPROXY | sed -e 's/,direct$$//')|off" \
		$(TOOLS)/xcaddy build $(CADDY_VERSION) --with github.com/ensgate/ensgate=. --output bin/ensgate-xcaddy
	./scripts/check-modules.sh bin/ensgate-xcaddy

# Developer tools, pinned in tools/go.mod, built into .tools/.
tools: $(TOOLS)/staticcheck $(TOOLS)/xcaddy

$(TOOLS)/staticcheck: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $@ honnef.co/go/tools/cmd/staticcheck

$(TOOLS)/xcaddy: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $@ github.com/caddyserver/xcaddy/cmd/xcaddy

clean:
	-./scripts/run.sh stop
	rm -rf bin .tools .run
