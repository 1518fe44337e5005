# Shared by the veth benchmarks (run.sh, cidr.sh); sourced, not run.
# The caller sets PREFIX (namespace names), CPU (the sender's CPU), SRV_IF,
# CLI_IF, SRV_IP, CLI_IP and PORT, then calls veth_init.

die() { echo "${0##*/}: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

tmp=""
pairs=()
mounts=() # unmounted on exit
declare -A helper_pid=()

# veth_init: checks root and the tools, picks the helpers' CPUs (OTHER:
# every CPU but the sender's), makes $tmp and builds the sender and the XDP
# loader into it; everything is removed on exit.
veth_init() {
	local tool
	[[ $EUID -eq 0 ]] || die "needs root (network namespaces, XDP, netfilter)"
	for tool in ip taskset go "$@"; do
		command -v "$tool" >/dev/null || die "$tool is missing"
	done
	ncpu=$(nproc)
	((CPU < ncpu)) || die "CPU=$CPU but this machine has $ncpu CPUs"
	if ((ncpu > 1)); then
		OTHER=$(seq 0 $((ncpu - 1)) | grep -vx "$CPU" | paste -sd,)
	else
		OTHER=$CPU
	fi
	trap veth_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	tmp=$(mktemp -d -t grain-bench.XXXXXX)
	log "building the sender and the XDP loader"
	go build -o "$tmp/sender" ./bench/veth/sender
	go build -o "$tmp/dropall" ./bench/veth/dropall
	clk_tck=$(getconf CLK_TCK)
}

veth_cleanup() {
	local rc=$? cfg pid i
	trap - EXIT INT TERM
	for cfg in "${!helper_pid[@]}"; do
		pid=${helper_pid[$cfg]}
		kill -TERM "$pid" 2>/dev/null || continue
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for cfg in "${pairs[@]}"; do
		ip netns delete "$PREFIX-$cfg-srv" 2>/dev/null || true
		ip netns delete "$PREFIX-$cfg-cli" 2>/dev/null || true
	done
	for i in "${mounts[@]}"; do
		umount "$i" 2>/dev/null || true
	done
	[[ -n $tmp ]] && rm -rf "$tmp"
	exit "$rc"
}

# make_pair CFG: the namespaces, the veth pair and the blackhole rule.
make_pair() {
	local srv=$PREFIX-$1-srv cli=$PREFIX-$1-cli ns
	pairs+=("$1")
	ip netns add "$srv"
	ip netns add "$cli"
	# Created inside the namespaces: the names never meet the host's.
	ip link add "$SRV_IF" netns "$srv" type veth peer name "$CLI_IF" netns "$cli"
	for ns in "$srv" "$cli"; do
		# No IPv6: router solicitations and the like would be stray packets.
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
		ip -n "$ns" link set lo up
	done
	ip -n "$srv" addr add "$SRV_IP/24" dev "$SRV_IF"
	ip -n "$cli" addr add "$CLI_IP/24" dev "$CLI_IF"
	ip -n "$srv" link set "$SRV_IF" up
	ip -n "$cli" link set "$CLI_IF" up
	# Passed packets end at the routing decision: the local table moves
	# behind a rule that blackholes TCP to the flood's port arriving on the
	# veth (forwarding is off, so not even an ICMP error is sent).
	ip -n "$srv" rule add pref 100 lookup local
	ip -n "$srv" rule del pref 0
	ip -n "$srv" rule add pref 10 iif "$SRV_IF" ipproto tcp dport "$PORT" blackhole
}

# start_helper CFG CMD...: runs CMD in CFG's server namespace on the other
# CPUs and waits (at most 60 s) for "attached" on its stderr.
start_helper() {
	local cfg=$1 i
	shift
	ip netns exec "$PREFIX-$cfg-srv" taskset -c "$OTHER" "$@" >/dev/null 2>"$tmp/$cfg.log" &
	helper_pid[$cfg]=$!
	for ((i = 0; i < 600; i++)); do
		grep -qs attached "$tmp/$cfg.log" && return 0
		kill -0 "${helper_pid[$cfg]}" 2>/dev/null || die "$cfg: $1 exited: $(cat "$tmp/$cfg.log")"
		sleep 0.1
	done
	die "$cfg: $1 did not report \"attached\" within 60 s: $(cat "$tmp/$cfg.log")"
}

# proc_cpu_ns PID: user+system time of a whole process so far, in ns.
proc_cpu_ns() {
	# Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends
	# the command name (which may contain spaces).
	local rest
	rest=$(sed 's/.*) //' "/proc/$1/stat")
	awk -v t="$clk_tck" '{ printf "%d\n", ($12 + $13) * 1e9 / t }' <<<"$rest"
}

# json_field NAME: the number NAME of the sender's JSON line on stdin.
json_field() {
	sed -n "s/.*\"$1\":\\([0-9.e+-]*\\).*/\\1/p"
}

# stats FILE KEY1 KEY2 COLUMN: "median min max" of COLUMN over the lines of
# FILE whose first two fields are KEY1 KEY2 ("- - -" when there are none).
stats() {
	awk -v a="$2" -v b="$3" -v col="$4" '$1 == a && $2 == b { print $col }' "$1" |
		sort -g | awk '{ v[NR] = $1 } END {
			if (NR == 0) { print "- - -"; exit }
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%.0f %.0f %.0f\n", m, v[1], v[NR]
		}'
}

# reached_routing NS: how many packets have reached the blackhole rule in
# namespace NS so far (IpInAddrErrors): those no filter dropped before it.
reached_routing() {
	ip netns exec "$1" awk '$1 == "Ip:" && $6 ~ /^[0-9]+$/ { print $6 }' /proc/net/snmp
}
