#!/usr/bin/env bash
# Installs what grain's demo and tests need, when it is missing. Needs root.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
command -v clang-19 >/dev/null || need+=(clang-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# scripts/vm-test.sh installs what the kernel tests under QEMU need.
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# bpffs and tracefs are not mounted at boot on minimal systems.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
# The cue CLI at the version of cuelang.org/go in go.mod, where the
# policies tests look for it (they install it there themselves if not).
go=${GO:-go}
cue_version=$($go list -m -f '{{.Version}}' cuelang.org/go)
cue_dir="${XDG_CACHE_HOME:-$HOME/.cache}/grain-tools/cue-$cue_version"
[ -x "$cue_dir/cue" ] || GOBIN="$cue_dir" $go install "cuelang.org/go/cmd/cue@$cue_version"
