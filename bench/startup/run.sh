#!/usr/bin/env bash
# Start-up to enforcing: the time from starting `grain run --policies
# examples/block-http` on one end of a veth pair (in a network namespace of
# its own, so grain attaches at tcx ingress) to its "enforcing" log line,
# for GRAIN and, when set, GRAIN_BEFORE (another grain binary, e.g. one
# built from an earlier commit), interleaved round by round (the order
# alternates), ROUNDS rounds, medians. Every run gets a fresh pin directory
# and status socket, so it starts from nothing, adopts nothing, and does not
# meet another grain's state.
#
#   sudo GRAIN_BEFORE=/tmp/grain-main ROUNDS=9 bench/startup/run.sh
#
# The log is polled every 10 ms: a figure is late by at most that.
set -euo pipefail
cd "$(dirname "$0")/../.."

GRAIN=${GRAIN:-bin/grain}
ROUNDS=${ROUNDS:-5}
POLICIES=${POLICIES:-examples/block-http}
TIMEOUT_S=${TIMEOUT_S:-60}

[ "$(id -u)" = 0 ] || { echo "run as root: grain loads BPF programs" >&2; exit 1; }
configs=(grain)
declare -A bins=([grain]=$GRAIN)
if [ -n "${GRAIN_BEFORE:-}" ]; then
	configs=(before grain)
	bins[before]=$GRAIN_BEFORE
fi
for c in "${configs[@]}"; do
	[ -x "${bins[$c]}" ] || { echo "${bins[$c]}: no such executable (make build, or set GRAIN/GRAIN_BEFORE)" >&2; exit 1; }
done

ns=gstartup$$
work=$(mktemp -d)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link add st0 type veth peer name st1
ip -n "$ns" link set st0 up
ip -n "$ns" link set st1 up

# one BIN RUN: prints the milliseconds from start to "enforcing".
one() {
	local bin=$1 run=$2 start now
	local log=$work/$run.log
	: >"$log"
	start=$(date +%s%N)
	ip netns exec "$ns" "$bin" run --policies "$POLICIES" --interface st0 --stdout=false \
		--pin-path "/sys/fs/bpf/$ns-$run" --status-socket "$work/$run.sock" >"$log" 2>&1 &
	pid=$!
	until grep -q enforcing "$log"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$bin exited before enforcing:" >&2
			cat "$log" >&2
			exit 1
		fi
		now=$(date +%s%N)
		if (( (now - start) / 1000000000 > TIMEOUT_S )); then
			echo "$bin: not enforcing after ${TIMEOUT_S}s" >&2
			kill "$pid"
			exit 1
		fi
		sleep 0.01
	done
	now=$(date +%s%N)
	kill "$pid"
	wait "$pid" || true
	pid=
	echo $(( (now - start) / 1000000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A ms
for r in $(seq 1 "$ROUNDS"); do
	order=("${configs[@]}")
	if (( r % 2 == 0 )); then
		order=($(printf '%s\n' "${configs[@]}" | tac))
	fi
	for c in "${order[@]}"; do
		t=$(one "${bins[$c]}" "$c-$r")
		ms[$c]+="$t "
		echo "round $r $c ${t} ms (load $(cut -d' ' -f1 /proc/loadavg))"
	done
done
echo
printf '%-8s %10s  %s\n' config median_ms "all (ms)"
for c in "${configs[@]}"; do
	printf '%-8s %10s  %s\n' "$c" "$(tr ' ' '\n' <<<"${ms[$c]}" | grep . | median)" "${ms[$c]}"
done
