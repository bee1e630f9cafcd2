# Vessel: two commands set everything up on Debian 12 as root:
#   make demo   build the example product end to end and show a tamper being caught
#   make test   install what the tests need, then run every test (root-only ones too)
export PATH := $(PATH):/usr/local/go/bin
GO        ?= go
BIN       := bin/vessel
TEST_TAGS ?= tpmsim
GOFLAGS_TEST ?= -count=1 -timeout 30m

.PHONY: all build deps test vet vm-test demo bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/vessel

deps:
	./scripts/deps.sh

vet:
	$(GO) vet -tags '$(TEST_TAGS)' ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting" >&2; exit 1; }

test: deps build vet
	$(GO) test -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) ./...

# Boots UKIs around vessel's initrd under OVMF Secure Boot with a vTPM (qemu TCG): 3 boots, a few minutes.
# Also part of make test (./... includes it); skips with the reason when qemu/ovmf/swtpm/kernel are missing.
vm-test: deps build
	$(GO) test -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) -v -run 'TestSecureBoot|TestVerifiedBoot' ./internal/vmtest/

demo: deps build
	./scripts/demo.sh

bench: deps build
	./bench/all.sh

fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
