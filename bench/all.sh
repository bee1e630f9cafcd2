#!/usr/bin/env bash
# make bench: every benchmark, each against its peer in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in bench/verity.sh bench/create.sh bench/tpm.sh bench/attest.sh bench/pull.sh bench/run.sh bench/build.sh bench/boot.sh bench/caps.sh bench/xarch.sh; do
  [ -x "$b" ] || [ -f "$b" ] || continue
  echo "=== $b"
  bash "$b"
done
echo "=== go benchmarks"
go test -run '^$' -bench . -benchtime 3x ./internal/verity/ ./internal/manifest/ ./internal/trust/ 2>/dev/null | grep -E '^(Benchmark|ok)' || true
