# Vessel: two commands set everything up on Debian 12 as root:
#   make demo   build the example product end to end and show a tamper being caught
#   make test   install what the tests need, then run every test (root-only ones too)
#   make vm-demo  build the bootable example product and boot it in a Secure Boot VM
export PATH := $(PATH):/usr/local/go/bin
GO        ?= go
BIN       := bin/vessel
TEST_TAGS ?= tpmsim
GOFLAGS_TEST ?= -count=1 -timeout 30m

.PHONY: all build deps test vet vm-test vm-soak demo vm-demo bench fuzz clean man

all: build

# vessel --version names the commit (also when the toolchain does not stamp it)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.commit=$(COMMIT)" -o $(BIN) ./cmd/vessel

deps:
	./scripts/deps.sh

vet:
	$(GO) vet -tags '$(TEST_TAGS)' ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting" >&2; exit 1; }

# The library packages run under the race detector. Measured with -p 1 on
# the loaded 2-core machine: ./internal/... takes about 5.5 minutes with
# -race (container 128 s, build 94 s; 74 s and 25 s without), while
# cmd/vessel's stories take 272 s with -race against 25 s without (every
# script step starts a race-instrumented vessel process), so the CLI
# stories run without it: the code they drive is raced in ./internal/...
# RACE= (empty) turns the race detector off. (-race needs cgo: gcc is in
# scripts/deps.sh.)
RACE ?= -race
test: deps build vet
	$(GO) test $(RACE) -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) ./internal/...
	$(GO) test -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) ./cmd/...

# Every VM test: UKIs around vessel's initrd under OVMF Secure Boot with a vTPM (qemu TCG), a few
# minutes. Also part of make test (./internal/... includes it); skips with the reason when
# qemu/ovmf/swtpm/kernel are missing.
vm-test: deps build
	$(GO) test -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) -v ./internal/vmtest/

# VM boots that make test leaves out: the network boot refusing another product's manifest and
# a tag moved back to an older version (the same trust.Verify checks the disk boot tests already
# run) and halting on a registry that is down (VESSEL_VM_SOAK=1); the update test's power cuts
# (SIGKILL of qemu at random moments while a version is staged on the machine and tried) 10 times
# instead of make test's 2 (docs/update.md). Tens of minutes under TCG.
vm-soak: deps build
	VESSEL_VM_SOAK=1 $(GO) test -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) -count=1 -timeout 60m -v -run 'TestNetBoot$$' ./internal/vmtest/
	VESSEL_VM_SOAK=10 $(GO) test -tags '$(TEST_TAGS)' -count=1 -timeout 180m -v -run 'TestUpdate$$' ./internal/vmtest/

demo: deps build
	./scripts/demo.sh

# examples/boot built with vessel build, signed, on a disk, booted under OVMF
# Secure Boot + swtpm (qemu TCG); its web service answers through hostfwd on
# 127.0.0.1, then a clean shutdown. About 1.5-3 minutes.
vm-demo: deps build
	./scripts/vm-demo.sh

bench: deps build
	./bench/all.sh

fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin

# man pages, one per command, generated from the command tree (as --help)
man: build
	$(BIN) man docs/man
