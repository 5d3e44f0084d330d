# creditgate — run `make help` for the list.
GO        ?= go
PKGS      ?= ./...
# Tests start their own redis-server unless REDIS_ADDR points at one (.ci/run does).
TESTFLAGS ?= -count=1 -timeout 15m

.PHONY: help build run test lint bench

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

build: ## install the creditgate binary into $(go env GOPATH)/bin
	$(GO) install ./cmd/creditgate
	@echo "installed: $$($(GO) env GOPATH)/bin/creditgate"

run: ## five-minute demo: in-memory ledger, Envoy-compatible proxy, fake provider (REDIS_URL to use Redis)
	$(GO) run ./cmd/creditgate demo

test: ## all tests, Lua scripts on a real redis-server
	$(GO) vet $(PKGS)
	$(GO) test $(TESTFLAGS) $(PKGS)

lint: ## gofmt + go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

bench: ## benchmarks, each reported against a baseline measured in the same run
	$(GO) test -count=1 -run '^$$' -bench . -benchmem $(PKGS)
