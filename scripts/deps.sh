#!/usr/bin/env bash
# Installs what grain's demo and tests need, when it is missing. Needs root.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl) # the TLS end-to-end test's server
command -v clang-19 >/dev/null || need+=(clang-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# The single-node cluster of deploy/kubernetes' tests, and the image's
# load tests (ctr, podman).
command -v etcd >/dev/null || need+=(etcd-server)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v podman >/dev/null || need+=(podman)
command -v openssl >/dev/null || need+=(openssl)
# The short runs of the benchmarks beside other tools (bench/veth's
# cidr.sh, bench/hook's bpftrace comparison) are tests too.
command -v ipset >/dev/null || need+=(ipset)
command -v nft >/dev/null || need+=(nftables)
command -v xdp-filter >/dev/null || need+=(xdp-tools)
command -v bpftrace >/dev/null || need+=(bpftrace)
# scripts/vm-test.sh installs what the kernel tests under QEMU need.
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	apt-get update -qq
	# Packages of daemons (etcd, containerd) must not start them: the
	# tests start their own, on their own ports and sockets.
	norc=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && norc=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	[ -z "$norc" ] || rm -f /usr/sbin/policy-rc.d
fi
# bpffs and tracefs are not mounted at boot on minimal systems.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
# The cue CLI at the version of cuelang.org/go in go.mod, where the
# policies tests look for it (they install it there themselves if not).
go=${GO:-go}
cue_version=$($go list -m -f '{{.Version}}' cuelang.org/go)
cue_dir="${XDG_CACHE_HOME:-$HOME/.cache}/grain-tools/cue-$cue_version"
[ -x "$cue_dir/cue" ] || GOBIN="$cue_dir" $go install "cuelang.org/go/cmd/cue@$cue_version"
