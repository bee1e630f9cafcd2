#!/usr/bin/env bash
# bench/attest.sh: time to quote (reference TPM simulator) and to verify a
# 100-machine batch of quotes (target < 10 ms each), vessel against
# go-attestation v0.6.4 (quote + firmware log replay, in process) and
# tpm2_checkquote (one process per quote) in the same run; prints ratios.
# Usage: bench/attest.sh   (needs go with cgo and libssl-dev for the simulator, tpm2-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go test -count=1 -tags tpmsim -v -run '^TestAttestBench$' ./internal/attest/ -args -attest.bench | grep -E '^attest:'
