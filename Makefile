# directord: see README.md. Targets that touch the network need root.
GO ?= go
STATICCHECK_VERSION ?= v0.8.2
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# -s -w: no symbol table or DWARF (pprof still reads the pclntab).
LDFLAGS = -s -w -X main.version=$(VERSION)
# A package's version must start with a digit: the release, then the commit.
PKG_VERSION ?= 0.2.0+git$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)

.PHONY: all build man package test test-deps test-race test-race-unit test-ipvs guest-kernel lint demo demo-scaleout bench bench-failover bench-lvs bench-healthcheck bench-cluster bench-sync bench-scaleout clean clean-lab

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ ./cmd/directord ./cmd/directorctl

# Unit tests, the network-namespace integration tests (root needed;
# without root they skip, except under CI=true where they fail) and the
# IPVS tests, which boot Debian's kernel in qemu (test-ipvs).
test: test-deps guest-kernel
	$(GO) test -count=1 ./...

# The Debian packages the tests, the demo and the benchmarks use, installed
# with apt-get the first time one is missing (it says so); else nothing.
test-deps:
	@./internal/testbed/test-deps.sh

# The IPVS data plane's tests, inside Debian's kernel under qemu: this
# machine's kernel may have no IPVS.
test-ipvs: test-deps guest-kernel
	$(GO) test -count=1 -v -run TestIPVSInGuest ./internal/testbed/guest

# Debian's current kernel package, unpacked (not installed) for the guest.
guest-kernel:
	./internal/testbed/guest/fetch-kernel.sh .cache/guest

# The same with the race detector in the tests and in the daemons they run.
test-race: test-deps guest-kernel
	GORACE=atexit_sleep_ms=0 DIRECTORD_RACE=1 $(GO) test -race -count=1 ./...

# The race detector on the packages whose tests need no root, network
# namespace or guest: quick enough for every CI run.
test-race-unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v -e /internal/testbed/e2e -e /internal/testbed/guest)

# The manual pages, from directord's flags, directorctl's usage and
# docs/configuration.md (make test fails when they are out of date).
man:
	$(GO) test -count=1 -run TestPagesUpToDate ./internal/manpage -args -update

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Builds, starts directord in a lab of network namespaces, shows it working
# and removes everything again.
demo: test-deps build
	$(GO) run ./internal/demo -bin bin

# The scale-out part: three directors behind a BGP router (FRR), losing
# one gracefully and one in a crash.
demo-scaleout: test-deps build
	$(GO) run ./internal/demo -bin bin -scaleout

# Benchmarks (root; not part of make test): each rewrites its section of
# docs/benchmarks.md.
# Each bench ends with "N of M targets met" and fails when it missed one;
# make bench runs them all and fails at the end if any did.
bench: test-deps build guest-kernel
	@status=0; for b in failover lvs healthcheck cluster sync scaleout; do \
	  $(MAKE) --no-print-directory bench-$$b || status=1; done; exit $$status

bench-failover: test-deps build
	$(GO) run ./internal/bench/failover -bin bin

bench-lvs: test-deps guest-kernel
	$(GO) run ./internal/bench/lvs

bench-healthcheck: test-deps build
	$(GO) run ./internal/bench/healthcheck -bin bin

bench-cluster: test-deps build
	$(GO) run ./internal/bench/cluster -bin bin

bench-sync: test-deps build
	$(GO) run ./internal/bench/sync -bin bin

bench-scaleout: test-deps build
	$(GO) run ./internal/bench/scaleout -bin bin

# dist/directord_*.deb and dist/directord-*.rpm: the static binaries, the
# unit, the example configuration (a conffile under /etc/directord), the
# manual pages, the completions, the docs, the alert rules and the
# dashboard. nfpm is a Go module tool pinned in go.mod.
package:
	rm -rf dist
	mkdir -p dist/stage
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o dist/stage/ ./cmd/directord ./cmd/directorctl
	dist/stage/directorctl completion bash > dist/stage/directorctl.bash
	dist/stage/directorctl completion zsh > dist/stage/_directorctl
	for p in deb rpm; do GOARCH=$$($(GO) env GOARCH) PKG_VERSION=$(PKG_VERSION) \
	  $(GO) tool nfpm package -f etc/nfpm.yaml -p $$p -t dist/ || exit 1; done

clean:
	rm -rf bin .cache dist

# Removes lab namespaces left behind by a test run that was killed (-9).
# Do not run it while tests run: it cannot tell theirs from leftovers.
clean-lab:
	ip netns list | grep -oE '^dl[0-9a-f]{6}-[^ ]+' | while read -r ns; do ip netns pids "$$ns" | xargs -r kill -9; ip netns del "$$ns"; done
