#!/usr/bin/env bash
# The grain demo (`make demo`): two network namespaces joined by a veth pair,
# a web server in one, curl in the other. grain, with the block-http policy on
# the server's interface, drops the HTTP/1.1 requests and prints a JSON
# event for each (a retransmission within a second is counted, not printed:
# emit.dedup); once grain is stopped, the same request works.
#
# Needs root, iproute2, curl and Go (for the small web server), and bin/grain
# (the Makefile builds it first). All traffic stays inside the two namespaces.
# Exits non-zero if a request is not blocked, no event is printed, or a
# request still fails after grain is stopped. Environment: GRAIN (the binary,
# default bin/grain), POLICIES (default examples/block-http).
set -euo pipefail

cd "$(dirname "$0")/.."

GRAIN=${GRAIN:-bin/grain}
POLICIES=${POLICIES:-examples/block-http}
SRV_NS=grain-demo-srv
CLI_NS=grain-demo-cli
SRV_IF=gdemo-srv
CLI_IF=gdemo-cli
SRV_IP4=10.200.0.1
CLI_IP4=10.200.0.2
SRV_IP6=fd00:200::1
CLI_IP6=fd00:200::2
PORT=8080
URL4="http://$SRV_IP4:$PORT/"
URL6="http://[$SRV_IP6]:$PORT/"

if [[ -t 1 ]]; then bold=$'\e[1m' red=$'\e[31m' green=$'\e[32m' off=$'\e[0m'; else bold='' red='' green='' off=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
say() { printf '    %s\n' "$*"; }
# show prints a command as a user would type it, then runs it with its output
# indented, and returns the command's status.
show() {
	printf '    %s$ %s%s\n' "$bold" "$*" "$off"
	"$@" 2>&1 | sed 's/^/      /'
	return "${PIPESTATUS[0]}"
}
fail() { printf '\n%sDEMO FAILED: %s%s\n' "$red" "$*" "$off" >&2; exit 1; }

# Checks before anything is made, each saying what to do.
[[ $EUID -eq 0 ]] || fail "run as root: the demo creates network namespaces and attaches BPF programs (sudo make demo)"
[[ -x $GRAIN ]] || fail "$GRAIN not found: build it first (make build, or go build -o bin/grain ./cmd/grain)"
for tool in ip curl go; do
	command -v "$tool" >/dev/null || fail "$tool is missing (ip: apt-get install iproute2; curl: apt-get install curl)"
done

tmp=""
server_pid=""
grain_pid=""

# stop_pid sends SIGTERM, waits up to 5 s, then SIGKILLs: bounded, so an
# interrupted demo always gets to delete its namespaces.
stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	[[ -n $grain_pid ]] && stop_pid "$grain_pid"
	[[ -n $server_pid ]] && stop_pid "$server_pid"
	# Deleting the namespaces deletes the veth pair with them.
	ip netns delete "$SRV_NS" 2>/dev/null || true
	ip netns delete "$CLI_NS" 2>/dev/null || true
	[[ -n $tmp ]] && rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
# INT and TERM exit through the EXIT trap, so cleanup runs once and the
# script does not carry on after an interrupted command.
trap 'exit 130' INT
trap 'exit 143' TERM

# A demo killed with SIGKILL cannot clean up: start from a clean slate.
ip netns delete "$SRV_NS" 2>/dev/null || true
ip netns delete "$CLI_NS" 2>/dev/null || true

tmp=$(mktemp -d -t grain-demo.XXXXXX)

step "Setting up two network namespaces joined by a veth pair"
show ip netns add "$SRV_NS"
show ip netns add "$CLI_NS"
show ip link add "$SRV_IF" netns "$SRV_NS" type veth peer name "$CLI_IF" netns "$CLI_NS"
for side in "$SRV_NS $SRV_IF $SRV_IP4 $SRV_IP6" "$CLI_NS $CLI_IF $CLI_IP4 $CLI_IP6"; do
	read -r ns dev ip4 ip6 <<<"$side"
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$ip4/24" dev "$dev"
	ip -n "$ns" addr add "$ip6/64" dev "$dev" nodad # usable now, no DAD wait
	ip -n "$ns" link set "$dev" up
done
say "server: $SRV_NS  $SRV_IF  $SRV_IP4/24  $SRV_IP6/64"
say "client: $CLI_NS  $CLI_IF  $CLI_IP4/24  $CLI_IP6/64"

step "Starting a web server in $SRV_NS on port $PORT"
go build -o "$tmp/demo-http-server" ./scripts/demo-http-server
ip netns exec "$SRV_NS" "$tmp/demo-http-server" -addr ":$PORT" -lifetime 5m 2>"$tmp/server.log" &
server_pid=$!
for ((i = 0; i < 50; i++)); do
	grep -qs listening "$tmp/server.log" && break
	kill -0 "$server_pid" 2>/dev/null || fail "the web server exited: $(cat "$tmp/server.log")"
	sleep 0.1
done
grep -qs listening "$tmp/server.log" || fail "the web server did not start within 5 s"

step "Without grain, HTTP/1.1 requests from $CLI_NS reach the server"
show ip netns exec "$CLI_NS" curl --http1.1 -sS -m 3 "$URL4" || fail "the request failed before grain was started"
show ip netns exec "$CLI_NS" curl --http1.1 -sS -m 3 -g "$URL6" || fail "the IPv6 request failed before grain was started"

step "Starting grain with the policy in $POLICIES on $SRV_IF"
server_lines_before=$(wc -l <"$tmp/server.log")
sed 's/^/    | /' "$POLICIES"/*.cue
printf '    %s$ ip netns exec %s %s run --policies %s --interface %s%s\n' "$bold" "$SRV_NS" "$GRAIN" "$POLICIES" "$SRV_IF" "$off"
ip netns exec "$SRV_NS" "$GRAIN" run --policies "$POLICIES" --interface "$SRV_IF" \
	>"$tmp/events.jsonl" 2>"$tmp/grain.log" &
grain_pid=$!
for ((i = 0; i < 100; i++)); do
	grep -qs attached "$tmp/grain.log" && break
	kill -0 "$grain_pid" 2>/dev/null || fail "grain exited before attaching:
$(cat "$tmp/grain.log")"
	sleep 0.1
done
grep -q attached "$tmp/grain.log" || fail "grain did not report \"attached\" within 10 s:
$(cat "$tmp/grain.log")"
sed 's/^/    grain: /' "$tmp/grain.log"

step "With grain, the same requests time out: grain drops every packet carrying HTTP/1.1"
say "(the TCP handshake passes, the request and its retransmissions are dropped)"
if show ip netns exec "$CLI_NS" curl --http1.1 -sS -m 3 "$URL4"; then
	fail "the IPv4 request was not blocked"
fi
if show ip netns exec "$CLI_NS" curl --http1.1 -sS -m 3 -g "$URL6"; then
	fail "the IPv6 request was not blocked"
fi

step "The events grain printed on stdout: one JSON line per blocked request, retransmissions deduplicated (\"repeated\")"
# Events reach stdout asynchronously: give the last ones a moment.
for ((i = 0; i < 20; i++)); do
	grep -q "\"$CLI_IP6\"" "$tmp/events.jsonl" && break
	sleep 0.1
done
sed 's/^/    /' "$tmp/events.jsonl"
grep -Eq "\"saddr\": ?\"$CLI_IP4\"" "$tmp/events.jsonl" || fail "no event with saddr $CLI_IP4 for the blocked IPv4 request"
grep -Eq "\"saddr\": ?\"$CLI_IP6\"" "$tmp/events.jsonl" || fail "no event with saddr $CLI_IP6 for the blocked IPv6 request"
say "$(wc -l <"$tmp/events.jsonl") events"

server_lines_during=$(wc -l <"$tmp/server.log")
if sed -n "$((server_lines_before + 1)),${server_lines_during}p" "$tmp/server.log" | grep -q GET; then
	fail "a request reached the web server while grain ran: $(cat "$tmp/server.log")"
fi

step "Removing the policy: stopping grain (SIGTERM) detaches its packet program (tc ingress on this veth, XDP elsewhere)"
printf '    %s$ kill -TERM %s%s\n' "$bold" "$grain_pid" "$off"
kill -TERM "$grain_pid"
for ((i = 0; i < 50; i++)); do
	kill -0 "$grain_pid" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$grain_pid" 2>/dev/null && fail "grain did not exit within 5 s of SIGTERM"
grain_rc=0
wait "$grain_pid" || grain_rc=$?
grain_pid=""
say "grain exited with status $grain_rc"
[[ $grain_rc -eq 0 ]] || fail "grain exited with status $grain_rc on SIGTERM:
$(tail -n 5 "$tmp/grain.log")"
if ip -n "$SRV_NS" link show "$SRV_IF" | grep -q xdp; then
	fail "an XDP program is still attached to $SRV_IF after grain exited"
fi

step "Without grain, the same requests work again"
show ip netns exec "$CLI_NS" curl --http1.1 -sS -m 3 "$URL4" || fail "the IPv4 request still fails after grain was stopped"
show ip netns exec "$CLI_NS" curl --http1.1 -sS -m 3 -g "$URL6" || fail "the IPv6 request still fails after grain was stopped"

step "What the web server saw: nothing while grain ran"
say "before grain:"
head -n "$server_lines_before" "$tmp/server.log" | sed 's/^/      /'
say "while grain ran: nothing"
say "after grain stopped (a request blocked earlier may appear here too: TCP went on"
say "retransmitting it after curl gave up, and without grain it gets through):"
tail -n "+$((server_lines_during + 1))" "$tmp/server.log" | sed 's/^/      /'

printf '\n%sDemo passed: blocked while grain ran, events printed, passing again once it stopped.%s\n' "$green" "$off"
