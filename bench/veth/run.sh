#!/usr/bin/env bash
# The side-by-side real-traffic benchmark: real packets over a veth pair
# between two network namespaces, an AF_PACKET sender in the client one and
# the filter on the server end, CPU time per packet for:
#
#   none      no filter
#   passall   an XDP program that passes everything (informational: what
#             attaching any XDP program to a veth costs passed traffic)
#   dropall   an XDP program that drops everything: the floor
#   iptables  iptables -t raw -A PREROUTING -p tcp -m string --algo bm
#             --string HTTP/1.1 -j DROP
#   grain     bin/grain run --policies examples/block-http
#
# and, on request through CONFIGS, informational ones: xdp-generic-passall,
# xdp-generic-dropall (the same programs in generic/skb mode), tcx-passall,
# tcx-dropall (at tc ingress, which keeps veth's normal receive path),
# grain-every (the policy with dedup "0s": an event for every dropped
# packet, where grain's default sends one per second for a flood that
# repeats one event) and grain-noemit (the policy without its emit line:
# grain without events), grain-before (GRAIN_BEFORE, another grain binary,
# e.g. one built from an earlier commit, with the same policies: a change
# measured beside the code before it, in the same run).
#
# and two floods: (1) short HTTP/1.1 requests (dropped by every filter) and
# (2) 1400-byte payloads without the pattern (passed by every filter but
# dropall). Goals: flood 1, grain's cost above the floor <= 1/3 of iptables';
# flood 2, grain's cost above no filter <= 1/3 of iptables'.
#
# Method (see bench/veth/sender for details): a frame sent on a veth is
# received by the peer synchronously in the sender's softirq, so the receive
# path is charged to the sending thread. Its CPU time (getrusage
# RUSAGE_THREAD) plus the run time of the ksoftirqd of its CPU, which takes
# over part of the softirq work under load, divided by the packets sent, is
# the figure reported. The sender is pinned to one CPU (CPU, default 1) and
# grain and the XDP loaders to the others, so grain's userspace (reading and
# printing events) does not share the sender's CPU; it is reported apart.
# Passed packets are dropped by a blackhole policy-routing rule right after
# the routing decision, without any reply (see bench/veth/sender).
#
# Every configuration has its own pair of namespaces, set up once, and the
# runs are interleaved round by round, so slow drifts of a shared machine
# spread over all configurations instead of biasing one. Median of RUNS.
#
# Needs root, iproute2, iptables (with xt_string), taskset and Go; bin/grain
# for the grain row (skipped with a note if it is missing).
# Environment: N (packets per run, 500000), RUNS (5), CPU (1), CONFIGS
# ("none passall dropall iptables grain"), GRAIN (bin/grain), POLICIES
# (examples/block-http). About 1.5 minutes with the defaults.
set -euo pipefail

cd "$(dirname "$0")/../.."

N=${N:-500000}
RUNS=${RUNS:-5}
CPU=${CPU:-1}
CONFIGS=${CONFIGS:-none passall dropall iptables grain}
GRAIN=${GRAIN:-bin/grain}
GRAIN_BEFORE=${GRAIN_BEFORE:-}
POLICIES=${POLICIES:-examples/block-http}

SRV_IF=gbsrv
CLI_IF=gbcli
SRV_IP=10.201.0.1
CLI_IP=10.201.0.2
PORT=8080
PREFIX=grain-bench-$$

# shellcheck source=bench/veth/lib.sh
. bench/veth/lib.sh
veth_init iptables

configs=()
notes=()
for cfg in $CONFIGS; do
	case $cfg in
	none | passall | dropall | iptables | xdp-generic-passall | xdp-generic-dropall | tcx-passall | tcx-dropall) configs+=("$cfg") ;;
	grain | grain-every | grain-noemit)
		if [[ -x $GRAIN ]]; then
			configs+=("$cfg")
		else
			notes+=("grain: skipped, $GRAIN not found (make build)")
		fi
		;;
	grain-before)
		[[ -x $GRAIN_BEFORE ]] || die "grain-before needs GRAIN_BEFORE, an executable grain"
		configs+=("$cfg")
		;;
	*) die "unknown configuration $cfg" ;;
	esac
done

# start_grain_variant CFG SED: grain with the policies edited by a sed
# script (into a directory of the configuration's own).
start_grain_variant() {
	mkdir "$tmp/$1"
	for f in "$POLICIES"/*.cue; do
		sed "$2" "$f" >"$tmp/$1/${f##*/}"
	done
	start_helper "$1" "$GRAIN" run --policies "$tmp/$1" --interface "$SRV_IF"
}

for cfg in "${configs[@]}"; do
	log "setting up $cfg"
	make_pair "$cfg"
	srv=$PREFIX-$cfg-srv
	case $cfg in
	none) ;;
	passall) start_helper "$cfg" "$tmp/dropall" -pass -interface "$SRV_IF" ;;
	dropall) start_helper "$cfg" "$tmp/dropall" -interface "$SRV_IF" ;;
	xdp-generic-passall | tcx-passall) start_helper "$cfg" "$tmp/dropall" -hook "${cfg%-*}" -pass -interface "$SRV_IF" ;;
	xdp-generic-dropall | tcx-dropall) start_helper "$cfg" "$tmp/dropall" -hook "${cfg%-*}" -interface "$SRV_IF" ;;
	iptables) ip netns exec "$srv" iptables -t raw -A PREROUTING -p tcp -m string --algo bm --string HTTP/1.1 -j DROP ;;
	# stdout (the JSON events) goes to /dev/null.
	grain) start_helper "$cfg" "$GRAIN" run --policies "$POLICIES" --interface "$SRV_IF" ;;
	grain-before) start_helper "$cfg" "$GRAIN_BEFORE" run --policies "$POLICIES" --interface "$SRV_IF" ;;
	grain-every) start_grain_variant "$cfg" 's/emit: {/emit: {dedup: "0s", /' ;;
	grain-noemit) start_grain_variant "$cfg" '/^[[:space:]]*emit:/d' ;;
	esac
done

# send CFG FLOOD COUNT: one flood, printing "cfg flood cpu+ksoftirqd wall
# machine" (ns per packet; machine: every CPU's busy time, /proc/stat).
send() {
	local cfg=$1 flood=$2 count=$3 mac json
	mac=$(ip netns exec "$PREFIX-$cfg-srv" cat "/sys/class/net/$SRV_IF/address")
	json=$(ip netns exec "$PREFIX-$cfg-cli" "$tmp/sender" -interface "$CLI_IF" -dst "$SRV_IP:$PORT" \
		-dst-mac "$mac" -payload "$flood" -n "$count" -cpu "$CPU" -label "$cfg/$flood")
	awk -v cfg="$cfg" -v flood="$flood" '{
		match($0, /"cpu_ns_per_pkt":[0-9.e+-]+/); c = substr($0, RSTART + 17, RLENGTH - 17)
		match($0, /"ksoftirqd_ns_per_pkt":[0-9.e+-]+/); k = substr($0, RSTART + 23, RLENGTH - 23)
		match($0, /"wall_ns_per_pkt":[0-9.e+-]+/); w = substr($0, RSTART + 18, RLENGTH - 18)
		match($0, /"machine_ns_per_pkt":[0-9.e+-]+/); m = substr($0, RSTART + 21, RLENGTH - 21)
		printf "%s %s %.1f %.1f %.1f\n", cfg, flood, c + k, w, m
	}' <<<"$json"
}

floods=(http filler)
log "warming up"
for cfg in "${configs[@]}"; do
	for flood in "${floods[@]}"; do
		send "$cfg" "$flood" $((N / 10)) >/dev/null
	done
done

# grain's userspace CPU time during flood 1, by configuration.
declare -A userspace_ns
for ((r = 1; r <= RUNS; r++)); do
	log "round $r of $RUNS"
	for cfg in "${configs[@]}"; do
		for flood in "${floods[@]}"; do
			before=0
			[[ $cfg == grain* && $flood == http ]] && before=$(proc_cpu_ns "${helper_pid[$cfg]}")
			send "$cfg" "$flood" "$N" >>"$tmp/results"
			if [[ $cfg == grain* && $flood == http ]]; then
				userspace_ns[$cfg]=$((${userspace_ns[$cfg]:-0} + $(proc_cpu_ns "${helper_pid[$cfg]}") - before))
			fi
		done
	done
done

median() { stats "$tmp/results" "$1" "$2" 3 | cut -d' ' -f1; }

describe() {
	case $1 in
	none) echo "no filter" ;;
	passall) echo "XDP pass-all (informational)" ;;
	dropall) echo "XDP drop-all (the floor)" ;;
	iptables) echo "iptables raw string --algo bm" ;;
	grain) echo "grain, $POLICIES (events to /dev/null; default dedup)" ;;
	grain-every) echo "grain, $POLICIES with dedup \"0s\": an event per dropped packet (informational)" ;;
	grain-noemit) echo "grain, $POLICIES without emit (informational)" ;;
	grain-before) echo "grain before ($GRAIN_BEFORE), $POLICIES" ;;
	xdp-generic-*) echo "XDP generic-mode ${1##*-} (informational)" ;;
	tcx-*) echo "tcx ingress ${1##*-} (informational)" ;;
	esac
}

# ratio NAME BASE [CFG]: "X ns / Y ns = R (goal <= 0.33: met|NOT met)" for
# grain (or CFG) against iptables, both above BASE, flood NAME.
ratio() {
	local flood=$1 base=$2 b g i
	b=$(median "$base" "$flood")
	i=$(median iptables "$flood")
	g=$(median "${3:-grain}" "$flood")
	awk -v b="$b" -v i="$i" -v g="$g" 'BEGIN {
		if (b == "" || i == "" || g == "") { print "n/a (a configuration is missing)"; exit }
		gi = g - b; ii = i - b
		if (ii <= 0) { printf "n/a: iptables is not above the baseline (%+d ns)\n", ii; exit }
		r = gi / ii
		printf "grain %+d ns / iptables %+d ns = %.2f (goal <= 0.33: %s)\n", gi, ii, r, r <= 1 / 3 ? "met" : "NOT met"
	}'
}

echo
echo "## veth benchmark: CPU ns per packet (median of $RUNS runs of $N packets; min-max)"
echo
echo "$(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $ncpu CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| configuration | flood 1: HTTP/1.1 request, 81 B frames (dropped) | wall | machine | flood 2: 1400 B filler, 1454 B frames (passed) | wall | machine |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for cfg in "${configs[@]}"; do
	read -r m1 lo1 hi1 < <(stats "$tmp/results" "$cfg" http 3)
	read -r w1 _ _ < <(stats "$tmp/results" "$cfg" http 4)
	read -r a1 _ _ < <(stats "$tmp/results" "$cfg" http 5)
	read -r m2 lo2 hi2 < <(stats "$tmp/results" "$cfg" filler 3)
	read -r w2 _ _ < <(stats "$tmp/results" "$cfg" filler 4)
	read -r a2 _ _ < <(stats "$tmp/results" "$cfg" filler 5)
	echo "| $(describe "$cfg") | $m1 ($lo1-$hi1) | $w1 | $a1 | $m2 ($lo2-$hi2) | $w2 | $a2 |"
done
echo
has() { [[ " ${configs[*]} " == *" $1 "* ]]; }
if has grain && has iptables; then
	has dropall && echo "- flood 1, cost above the floor (drop-all): $(ratio http dropall)"
	has none && echo "- flood 2, cost above no filter: $(ratio filler none)"
fi
if has grain-every && has iptables && has dropall; then
	echo "- the same with an event for every dropped packet (grain-every): $(ratio http dropall grain-every)"
fi
for cfg in grain grain-before grain-every grain-noemit; do
	has $cfg || continue
	awk -v cfg="$cfg" -v ns="${userspace_ns[$cfg]:-0}" -v n=$((N * RUNS)) 'BEGIN {
		printf "- %s: its userspace, on the other CPUs and not in the figures, used %.1f ns per dropped packet during flood 1\n", cfg, ns / n
	}'
done
for note in "${notes[@]}"; do
	echo "- $note"
done
echo "- CPU = the sender thread's user+system time (getrusage) + its CPU's ksoftirqd, per packet; wall = elapsed per packet; machine = every CPU's busy time (/proc/stat) per packet, including whatever else ran meanwhile"
echo "- passed packets end at a blackhole routing rule in the server namespace (no reply traffic)"
echo
extra=""
[[ $GRAIN != bin/grain ]] && extra+=" GRAIN=$GRAIN"
[[ -n $GRAIN_BEFORE ]] && extra+=" GRAIN_BEFORE=$GRAIN_BEFORE"
[[ $POLICIES != examples/block-http ]] && extra+=" POLICIES=$POLICIES"
echo "Command: sudo N=$N RUNS=$RUNS CPU=$CPU CONFIGS=\"$CONFIGS\"$extra bench/veth/run.sh"
