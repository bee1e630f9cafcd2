# Vessel: two commands set everything up on Debian 12 as root:
#   make demo   build the example product end to end and show a tamper being caught
#   make test   install what the tests need, then run every test (root-only ones too)
export PATH := $(PATH):/usr/local/go/bin
GO        ?= go
BIN       := bin/vessel
TEST_TAGS ?= tpmsim
GOFLAGS_TEST ?= -count=1 -timeout 30m

.PHONY: all build deps test vet demo bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/vessel

deps:
	./scripts/deps.sh

vet:
	$(GO) vet -tags '$(TEST_TAGS)' ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting" >&2; exit 1; }

# Every package runs under the race detector: measured on the 2-core CI
# machine (loaded), the whole suite takes about 10 minutes with -race -p 1,
# cmd/vessel's stories the longest at about 4.5 minutes. RACE= (empty)
# turns it off. (-race needs cgo: gcc is in scripts/deps.sh.)
RACE ?= -race
test: deps build vet
	$(GO) test $(RACE) -tags '$(TEST_TAGS)' $(GOFLAGS_TEST) ./...

demo: deps build
	./scripts/demo.sh

bench: deps build
	./bench/all.sh

fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
