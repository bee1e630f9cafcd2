#!/usr/bin/env bash
# bench/tpm.sh: TPM commands and wall time per unseal with a signed PCR7
# policy on swtpm, vessel against the equivalent tpm2-tools command sequence
# (loadexternal, verifysignature, load, startauthsession, policypcr, policynv,
# policyauthorize, policyor, unseal, flushes) in the same run; prints the ratio.
# tpm2-tools' commands are counted by a proxy in front of swtpm.
# Also: signatures per second with a TPM-held key against a PEM key (TestKeySignRate).
# Usage: bench/tpm.sh   (needs go, swtpm, tpm2-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
for c in swtpm tpm2_unseal; do
  command -v "$c" >/dev/null || { echo "bench/tpm.sh: $c not found (make deps)" >&2; exit 1; }
done
go test -count=1 -v -run '^TestUnsealCost$' ./internal/tpm/ -args -tpm.bench | grep -vE '^(=== RUN|--- PASS|PASS|ok )'
go test -count=1 -run '^$' -bench '^BenchmarkUnsealSwtpm$' -benchtime 200x ./internal/tpm/ | grep -E '^Benchmark'
# Signing with a TPM-held key (load, sign, flush per signature) against a PEM key, same run.
go test -count=1 -v -run '^TestKeySignRate$' ./internal/tpm/ -args -tpm.bench | grep -vE '^(=== RUN|--- PASS|PASS|ok )'
