#!/usr/bin/env bash
# bench/verity.sh: time `vessel verity format` against `veritysetup format` on
# the same 1 GiB random file (page cache warm, best of 3 each), and compare
# vessel's throughput per core with the single-core sha256 limit.
# Usage: bench/verity.sh [SIZE_MiB]   (run from anywhere; needs veritysetup, go)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${1:-1024}
runs=3
tmp=$(mktemp -d -t vessel-verity-bench.XXXXXXXX)
# Remove only what this script wrote, so a mistake can never take other files with it.
cleanup() { rm -f "$tmp/data" "$tmp/hash" "$tmp/hash.veritysetup"; rmdir "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v veritysetup >/dev/null || { echo "veritysetup not found (apt-get install cryptsetup-bin)" >&2; exit 1; }

echo "building vessel (CGO_ENABLED=0)..."
(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel

echo "creating a ${size_mib} MiB random file in $tmp..."
head -c $((size_mib << 20)) /dev/urandom >"$tmp/data"
cat "$tmp/data" >/dev/null # warm the page cache

salt=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
uuid=12345678-1234-1234-1234-123456789abc

# best_of CMD...: run CMD $runs times, print "wall cpu" (seconds) of the fastest run.
best_of() {
	local best="" line
	for _ in $(seq "$runs"); do
		rm -f "$tmp/hash"
		line=$( { /usr/bin/env TIMEFORMAT='%R %U %S' bash -c 'time "$@" >/dev/null' _ "$@"; } 2>&1 | tail -1)
		read -r wall user sys <<<"$line"
		cpu=$(echo "$user + $sys" | bc -l)
		if [ -z "$best" ] || [ "$(echo "$wall < ${best% *}" | bc -l)" = 1 ]; then best="$wall $cpu"; fi
	done
	echo "$best"
}

read -r vs_wall vs_cpu <<<"$(best_of veritysetup format "$tmp/data" "$tmp/hash" --salt=$salt --uuid=$uuid)"
cp "$tmp/hash" "$tmp/hash.veritysetup"
read -r v_wall v_cpu <<<"$(best_of "$vessel" verity format "$tmp/data" "$tmp/hash" --salt $salt --uuid $uuid)"
if cmp -s "$tmp/hash" "$tmp/hash.veritysetup"; then same=yes; else same=NO; fi

# Single-core sha256 limit on 4096-byte blocks: OpenSSL (what veritysetup uses) and Go's.
ossl=$(openssl speed -evp sha256 -bytes 4096 -seconds 2 2>/dev/null | awk '/^sha256/ {sub(/k$/, "", $NF); print $NF / 1000}')
gosha=$(cd "$repo" && go test -run '^$' -bench '^BenchmarkSHA256Block$' -cpu 1 -benchtime 2s ./internal/verity | awk '/^BenchmarkSHA256Block/ {print $(NF-1)}')

mb=$(echo "$size_mib * 1.048576" | bc -l)
cores=$(echo "$v_cpu / $v_wall" | bc -l)
per_core=$(echo "$mb / $v_cpu" | bc -l) # MB/s per core-second actually used
printf '\n%s MiB, best of %d, %d CPUs, load average %s\n' "$size_mib" "$runs" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'veritysetup format: %6.3f s wall (%6.0f MB/s)\n' "$vs_wall" "$(echo "$mb / $vs_wall" | bc -l)"
printf 'vessel verity format: %6.3f s wall (%6.0f MB/s), %.2f cores used\n' "$v_wall" "$(echo "$mb / $v_wall" | bc -l)" "$cores"
printf 'ratio vessel/veritysetup: %.2f (target <= 0.70)\n' "$(echo "$v_wall / $vs_wall" | bc -l)"
printf 'hash areas byte-identical: %s\n' "$same"
printf 'single-core sha256 (4096-byte blocks): openssl %.0f MB/s, Go %.0f MB/s\n' "$ossl" "$gosha"
printf 'vessel per core used: %.0f MB/s = %.2fx below the Go single-core limit (target <= 1.2x)\n' \
	"$per_core" "$(echo "$gosha / $per_core" | bc -l)"
[ "$same" = yes ]
