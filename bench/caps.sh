#!/usr/bin/env bash
# bench/caps.sh: capability learning (vessel caps learn). In one run:
#   1. tracing overhead: a shell starting /bin/true 200 times (each execve and
#      mmap makes a no-audit CAP_SYS_ADMIN check: ~2600 traced checks per run),
#      untraced vs traced vs traced-for-another-cgroup, interleaved
#      (BenchmarkTracing in internal/caps: medians of per-round ratios to untraced,
#      CPU time of the workload and wall time; target <= 1.2);
#   2. learn time: `vessel caps learn` (trace, then drop-one over the traced
#      set) vs `vessel caps learn --no-trace` (the naive drop-one search over
#      every capability vessel holds) on known-answer workloads; prints runs,
#      seconds and naive/traced (target >= 5).
# Usage: N=10 DURATION=1s bench/caps.sh   (root; runc, mksquashfs, busybox-static, jq)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10}
DURATION=${DURATION:-1s}
[ "$(id -u)" -eq 0 ] || { echo "caps.sh: needs root (BPF, containers)" >&2; exit 1; }
for tool in runc mksquashfs jq busybox; do
  command -v "$tool" >/dev/null || { echo "caps.sh: $tool is not installed (make deps)" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/vessel-bench-caps.XXXXXX)
export VESSEL_ROOT=$tmp/root VESSEL_RUN=$tmp/run
cleanup() {
  set +e
  grep -F " $tmp/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== tracing overhead (go test -bench Tracing -benchtime ${N}x ./internal/caps)"
(cd "$repo" && go test -run '^$' -bench Tracing -benchtime "${N}x" ./internal/caps) | grep '^Benchmark' |
  tr -s ' \t' '\n' | awk '
    /\/op$|untraced-(cpu|wall)$/ { printf "  %-26s %s\n", $0, prev } { prev = $0 }'

(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel
mkdir -p "$tmp/base/bin" "$tmp/base/etc"
cp "$(command -v busybox)" "$tmp/base/bin/busybox"
for a in sh chown nc ping sleep; do ln -s busybox "$tmp/base/bin/$a"; done
echo hello > "$tmp/base/etc/motd"
"$vessel" image create bb:1 --layer "$tmp/base" >/dev/null 2>&1

echo "== learn time: traced vs naive drop-one ($(cut -d' ' -f1 /proc/loadavg) load)"
printf "  %-14s %-26s %16s %16s %8s\n" workload learned traced "naive drop-one" naive/traced
learn() { # name, flags... -- prints "runs seconds set"
  local out
  out=$("$vessel" --json caps learn "$@")
  jq -r '"\(.runs) \(.elapsed) \([.caps[].cap] | map(sub("CAP_";"")) | join(",") | if . == "" then "-" else . end)"' <<<"$out"
}
secs() { # a Go duration -> seconds
  awk -v d="$1" 'BEGIN { if (d ~ /ms$/) { sub(/ms$/,"",d); print d/1000 } else if (d ~ /m[0-9.]+s$/) { split(d,a,"m"); sub(/s$/,"",a[2]); print a[1]*60+a[2] } else { sub(/s$/,"",d); print d+0 } }'
}
row() { # name, flags...
  local name=$1; shift
  read -r tr_runs tr_el tr_set < <(learn "$@")
  read -r nv_runs nv_el nv_set < <(learn --no-trace "$@")
  [ "$tr_set" = "$nv_set" ] || { echo "caps.sh: $name: traced learned $tr_set, naive $nv_set" >&2; exit 1; }
  local t n
  t=$(secs "$tr_el"); n=$(secs "$nv_el")
  printf "  %-14s %-26s %4d runs %6.2fs %4d runs %6.2fs %8.1f\n" "$name" "$tr_set" "$tr_runs" "$t" "$nv_runs" "$n" "$(awk -v a="$n" -v b="$t" 'BEGIN{print a/b}')"
}
row chown bb:1 -- /bin/chown 1:1 /etc/motd
row ping bb:1 -- /bin/ping -c1 127.0.0.1
row nothing bb:1 -- /bin/sh -c true
row "port 80" --duration "$DURATION" bb:1 -- /bin/nc -l -p 80
