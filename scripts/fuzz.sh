#!/usr/bin/env bash
# make fuzz [FUZZTIME=30s]: run every Go fuzz target for FUZZTIME each.
# Targets are found with go test -list, so a new Fuzz* function (for example
# recipe's FuzzParse over vessel.yaml) is picked up without editing this file.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-30s}
for pkg in $(go list ./...); do
  for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "=== $pkg $f ($t)"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg"
  done
done
