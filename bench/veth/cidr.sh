#!/usr/bin/env bash
# Address rule sets at scale on real traffic: COUNTS source prefixes to drop,
# in every filter users pick for that, beside grain, on the veth harness
# (bench/veth/sender; the method is run.sh's: an AF_PACKET sender pinned to
# CPU, the filter on the other end of a veth pair in its own namespaces,
# every configuration set up once and the runs interleaved round by round,
# median of RUNS). Configurations, each with every count of COUNTS:
#
#   none        no filter (once, not per count)
#   iptables    one iptables -t raw PREROUTING -s PREFIX -j DROP rule per
#               prefix (a linear list)
#   ipset       an ipset hash:net set and one iptables rule matching it
#   nft         an nftables set with flags interval and one rule, at the
#               raw priority of prerouting
#   xdp-filter  xdp-tools' xdp-filter in native XDP mode (ipv4 only). It
#               takes addresses, not prefixes: it gets the first address of
#               each prefix, so it decides the same for both floods but
#               holds a smaller rule set (an informational row)
#   grain       bin/grain run with one policy: match saddr: [prefixes],
#               then: "drop" (no emit: no peer logs either)
#
# The prefixes: LENGTHS=mixed (the default) cycles through /16../32, as
# published block lists mix them; LENGTHS=24 makes them all /24. Prefix i
# lies in its own /16, (1+i/256).(i%256).0.0, so none contains another.
# Two floods of short TCP segments (64 B frames) to a port blackholed after
# the routing decision (run.sh explains why):
#
#   miss   from 198.18.0.7, in no prefix: every packet passes, the worst
#          case for a list; cost above no filter
#   hit    from the first address of the last prefix: every packet dropped
#
# Figures per packet: "sender" is the sending thread's CPU time plus its
# CPU's ksoftirqd (run.sh's figure), "machine" the busy time of every CPU
# (/proc/stat), which also holds the other CPU's ksoftirqd, grain's
# userspace and whatever else runs on a shared machine meanwhile; the
# notes under the table split it (helper processes, every ksoftirqd).
#
# Needs root, iproute2, taskset and Go; iptables, ipset, nft, xdp-filter and
# bin/grain for their rows: a missing one is skipped with a note
# (INSTALL=1 installs the Debian packages iptables, ipset, nftables and
# xdp-tools first). Environment: N (packets per run, 300000), RUNS (5),
# CPU (1), COUNTS ("1 1000 10000"), CONFIGS ("none iptables ipset nft
# xdp-filter grain"), LENGTHS (mixed), GRAIN (bin/grain).
set -euo pipefail

cd "$(dirname "$0")/../.."

N=${N:-300000}
RUNS=${RUNS:-5}
CPU=${CPU:-1}
COUNTS=${COUNTS:-1 1000 10000}
CONFIGS=${CONFIGS:-none iptables ipset nft xdp-filter grain}
LENGTHS=${LENGTHS:-mixed}
GRAIN=${GRAIN:-bin/grain}
INSTALL=${INSTALL:-0}

SRV_IF=gcsrv
CLI_IF=gccli
SRV_IP=10.202.0.1
CLI_IP=10.202.0.2
PORT=8080
PREFIX=grain-cidr-$$
MISS_SRC=198.18.0.7

# shellcheck source=bench/veth/lib.sh
. bench/veth/lib.sh
[[ $LENGTHS == mixed || $LENGTHS == 24 ]] || die "LENGTHS=$LENGTHS: want mixed or 24"
for count in $COUNTS; do
	[[ $count =~ ^[1-9][0-9]*$ ]] && ((count <= 60000)) || die "COUNTS: $count is not a count of prefixes from 1 to 60000"
done
if [[ $INSTALL == 1 ]]; then
	missing=()
	command -v iptables >/dev/null || missing+=(iptables)
	command -v ipset >/dev/null || missing+=(ipset)
	command -v nft >/dev/null || missing+=(nftables)
	command -v xdp-filter >/dev/null || missing+=(xdp-tools)
	if ((${#missing[@]})); then
		log "installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
fi
veth_init

# prefixes COUNT: the prefixes, one a line, the last one last.
prefixes() {
	awk -v n="$1" -v lengths="$LENGTHS" 'BEGIN {
		for (i = 0; i < n; i++) {
			len = lengths == "mixed" ? 16 + i % 17 : 24
			printf "%d.%d.0.0/%d\n", 1 + int(i / 256), i % 256, len
		}
	}'
}
# hit_src COUNT: the first address of the last prefix.
hit_src() { prefixes "$1" | tail -n1 | sed 's|/.*||'; }

configs=()
notes=()
has_tool() { command -v "$1" >/dev/null || { notes+=("$2: skipped, $1 is missing (INSTALL=1 installs it)"); return 1; }; }
for cfg in $CONFIGS; do
	case $cfg in
	none) configs+=(none) ;;
	iptables | ipset | nft | xdp-filter | grain)
		case $cfg in
		iptables) has_tool iptables-restore iptables || continue ;;
		ipset) { has_tool ipset ipset && has_tool iptables ipset; } || continue ;;
		nft) has_tool nft nft || continue ;;
		xdp-filter) has_tool xdp-filter xdp-filter || continue ;;
		grain) [[ -x $GRAIN ]] || { notes+=("grain: skipped, $GRAIN not found (make build)"); continue; } ;;
		esac
		for count in $COUNTS; do configs+=("$cfg-$count"); done
		;;
	*) die "unknown configuration $cfg" ;;
	esac
done

for cfg in "${configs[@]}"; do
	log "setting up $cfg"
	make_pair "$cfg"
	srv=$PREFIX-$cfg-srv
	count=${cfg##*-}
	case $cfg in
	none) ;;
	iptables-*)
		{
			echo '*raw'
			prefixes "$count" | sed 's|.*|-A PREROUTING -s & -j DROP|'
			echo COMMIT
		} | ip netns exec "$srv" iptables-restore
		;;
	ipset-*)
		# Sets are per network namespace; the name is the same in each.
		{
			echo "create grain-bench hash:net family inet maxelem $((count + 1024))"
			prefixes "$count" | sed 's|.*|add grain-bench &|'
		} | ip netns exec "$srv" ipset restore
		ip netns exec "$srv" iptables -t raw -A PREROUTING -m set --match-set grain-bench src -j DROP
		;;
	nft-*)
		{
			echo 'table ip grain_bench {'
			echo '  set blocked { type ipv4_addr; flags interval;'
			echo '    elements = {'
			prefixes "$count" | sed 's|.*|&,|'
			echo '    } }'
			echo '  chain pre { type filter hook prerouting priority raw; ip saddr @blocked drop; }'
			echo '}'
		} | ip netns exec "$srv" nft -f -
		;;
	xdp-filter-*)
		# xdp-filter pins its maps under one bpffs path: a bpffs instance
		# of its own per configuration keeps their address lists apart.
		mkdir "$tmp/$cfg.bpffs"
		mount -t bpf bpf "$tmp/$cfg.bpffs"
		mounts+=("$tmp/$cfg.bpffs")
		# Loaded and filled in one mount namespace: `ip netns exec` makes a
		# new one each time, and where libxdp falls back to a bpffs of its
		# own in there (a CI run once found no filter map after the load),
		# its pins would not outlive the command.
		prefixes "$count" | sed 's|/.*||' >"$tmp/$cfg.addrs"
		LIBXDP_BPFFS=$tmp/$cfg.bpffs ip netns exec "$srv" sh -ec '
			xdp-filter load -f ipv4 "$1"
			while read -r a; do xdp-filter ip -m src "$a"; done <"$2"
		' sh "$SRV_IF" "$tmp/$cfg.addrs"
		;;
	grain-*)
		mkdir "$tmp/$cfg"
		{
			echo 'block_prefixes: {'
			echo '	xdp: interfaces: []'
			echo '	match: saddr: ['
			prefixes "$count" | sed 's|.*|		"&",|'
			echo '	]'
			echo '	then: "drop"'
			echo '}'
		} >"$tmp/$cfg/policy.cue"
		start_helper "$cfg" "$GRAIN" run --policies "$tmp/$cfg" --interface "$SRV_IF"
		;;
	esac
done

# send CFG FLOOD COUNT: one flood; appends "cfg flood sender wall machine
# ksoftirqd-all helper" (ns per packet) to the results.
send() {
	local cfg=$1 flood=$2 n=$3 mac src json helper=0 h0=0 h1 reached want got i
	mac=$(ip netns exec "$PREFIX-$cfg-srv" cat "/sys/class/net/$SRV_IF/address")
	src=$MISS_SRC
	# "none" has no prefixes: its hit flood comes from the largest count's.
	[[ $flood == hit ]] && src=$(hit_src "$([[ $cfg == none ]] && echo "${COUNTS##* }" || echo "${cfg##*-}")")
	[[ -n ${helper_pid[$cfg]:-} ]] && h0=$(proc_cpu_ns "${helper_pid[$cfg]}")
	reached=$(reached_routing "$PREFIX-$cfg-srv")
	json=$(ip netns exec "$PREFIX-$cfg-cli" "$tmp/sender" -interface "$CLI_IF" -dst "$SRV_IP:$PORT" \
		-dst-mac "$mac" -src "$src" -payload filler -size 10 -n "$n" -cpu "$CPU" -label "$cfg/$flood")
	if [[ -n ${helper_pid[$cfg]:-} ]]; then
		h1=$(proc_cpu_ns "${helper_pid[$cfg]}")
		helper=$(((h1 - h0) / n))
	fi
	# A figure counts only if the filter did what it is there for: every
	# packet of a miss passed, every packet of a hit was dropped. The last
	# packets may still wait in the backlog for a ksoftirqd: wait for them
	# (at most 5 s).
	want=$n
	[[ $flood == hit && $cfg != none ]] && want=0
	for ((i = 0; i < 100; i++)); do
		got=$(($(reached_routing "$PREFIX-$cfg-srv") - reached))
		((got >= want)) && break
		sleep 0.05
	done
	((got == want)) || die "$cfg, $flood flood: $got of $n packets passed, want $want"
	awk -v cfg="$cfg" -v flood="$flood" -v helper="$helper" \
		-v c="$(json_field cpu_ns_per_pkt <<<"$json")" \
		-v k="$(json_field ksoftirqd_ns_per_pkt <<<"$json")" \
		-v w="$(json_field wall_ns_per_pkt <<<"$json")" \
		-v m="$(json_field machine_ns_per_pkt <<<"$json")" \
		-v a="$(json_field all_ksoftirqd_ns_per_pkt <<<"$json")" \
		'BEGIN { printf "%s %s %.1f %.1f %.1f %.1f %d\n", cfg, flood, c + k, w, m, a, helper }' >>"$tmp/results"
}

floods=(miss hit)
log "warming up"
for cfg in "${configs[@]}"; do
	for flood in "${floods[@]}"; do
		send "$cfg" "$flood" $((N / 10))
	done
done
: >"$tmp/results"
for ((r = 1; r <= RUNS; r++)); do
	log "round $r of $RUNS"
	for cfg in "${configs[@]}"; do
		for flood in "${floods[@]}"; do
			send "$cfg" "$flood" "$N"
		done
	done
done

med() { stats "$tmp/results" "$1" "$2" "$3" | cut -d' ' -f1; }
describe() {
	case $1 in
	none) echo "no filter" ;;
	iptables-*) echo "iptables, one rule per prefix" ;;
	ipset-*) echo "ipset hash:net + one iptables rule" ;;
	nft-*) echo "nftables set, flags interval" ;;
	xdp-filter-*) echo "xdp-filter (addresses, not prefixes; informational)" ;;
	grain-*) echo "grain, match saddr: [prefixes]" ;;
	esac
}

echo
echo "## Address rule sets at scale: ns per packet (median of $RUNS runs of $N packets, 64 B frames; LENGTHS=$LENGTHS)"
echo
echo "$(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $ncpu CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| configuration | prefixes | miss: sender | above none | machine | above none | hit: sender | machine |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
none_s=$(med none miss 3)
none_m=$(med none miss 5)
for cfg in "${configs[@]}"; do
	count=-
	[[ $cfg != none ]] && count=${cfg##*-}
	read -r s lo hi < <(stats "$tmp/results" "$cfg" miss 3)
	m=$(med "$cfg" miss 5)
	read -r hs hlo hhi < <(stats "$tmp/results" "$cfg" hit 3)
	hm=$(med "$cfg" hit 5)
	as=- am=-
	if [[ -n $none_s && $none_s != - ]]; then
		as=$(awk -v a="$s" -v b="$none_s" 'BEGIN { printf "%+d", a - b }')
		am=$(awk -v a="$m" -v b="$none_m" 'BEGIN { printf "%+d", a - b }')
	fi
	[[ $cfg == none ]] && hs=- hlo=- hhi=- hm=-
	echo "| $(describe "$cfg") | $count | $s ($lo-$hi) | $as | $m | $am | $hs ($hlo-$hhi) | $hm |"
done
echo
# The goal: grain's cost above no filter at most the best peer's, per count
# and flood (the hit flood's baseline is the same for all, so the absolute
# figures compare), and flat from the smallest count to the largest.
for count in $COUNTS; do
	for flood in miss hit; do
		[[ " ${configs[*]} " == *" grain-$count "* ]] || continue
		best="" bestv=""
		for peer in iptables ipset nft; do
			[[ " ${configs[*]} " == *" $peer-$count "* ]] || continue
			v=$(med "$peer-$count" "$flood" 3)
			if [[ -z $bestv ]] || awk -v a="$v" -v b="$bestv" 'BEGIN { exit !(a < b) }'; then
				best=$peer bestv=$v
			fi
		done
		[[ -n $best ]] || continue
		g=$(med "grain-$count" "$flood" 3)
		awk -v g="$g" -v p="$bestv" -v n="$none_s" -v best="$best" -v count="$count" -v flood="$flood" 'BEGIN {
			printf "- %s prefixes, %s: grain %d ns, best peer (%s) %d ns, both above no filter (%d ns): %+d vs %+d (goal grain <= best: %s)\n",
				count, flood, g, best, p, n, g - n, p - n, g <= p ? "met" : "NOT met"
		}'
	done
done
first=${COUNTS%% *} last=${COUNTS##* }
if [[ $first != "$last" && " ${configs[*]} " == *" grain-$first "* && " ${configs[*]} " == *" grain-$last "* ]]; then
	for flood in miss hit; do
		awk -v a="$(med "grain-$first" "$flood" 3)" -v b="$(med "grain-$last" "$flood" 3)" -v n="$none_s" \
			-v first="$first" -v last="$last" -v flood="$flood" 'BEGIN {
			r = b / a
			printf "- grain %s -> %s prefixes, %s: %d -> %d ns = %.2fx (goal <= 1.5x: %s)\n", first, last, flood, a, b, r, r <= 1.5 ? "met" : "NOT met"
		}'
	done
fi
echo "- where the machine figure goes, miss flood (medians, ns per packet): every CPU's ksoftirqd | the filter's userspace process"
for cfg in "${configs[@]}"; do
	echo "  - $cfg: $(med "$cfg" miss 6) | $(med "$cfg" miss 7)"
done
for note in "${notes[@]}"; do
	echo "- $note"
done
echo "- sender = the sending thread's user+system time (getrusage) + its CPU's ksoftirqd; machine = every CPU's busy time (/proc/stat: all but idle, iowait, steal) during the flood, whatever ran"
echo
echo "Command: sudo N=$N RUNS=$RUNS CPU=$CPU COUNTS=\"$COUNTS\" CONFIGS=\"$CONFIGS\" LENGTHS=$LENGTHS bench/veth/cidr.sh"
