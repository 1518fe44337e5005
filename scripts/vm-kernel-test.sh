#!/usr/bin/env bash
# Runs grain's BPF kernel tests (BPF_PROG_TEST_RUN) inside Debian's stock
# 6.1 kernel under QEMU (software emulation), to check that the generic XDP
# program passes an older verifier. `make test` runs it; by hand, as root:
#   scripts/vm-kernel-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KPKG=${KPKG:-linux-image-6.1.0-56-amd64}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for tool in qemu-system-x86_64 busybox cpio; do
	command -v "$tool" >/dev/null || need=1
done
if [ "${need:-0}" = 1 ] || [ ! -x /bin/busybox ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 busybox-static cpio >/dev/null
fi
# apt-get download needs current package lists; refresh them once if not.
(cd "$work" && { apt-get download -qq "$KPKG" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$KPKG"; }; } && dpkg -x ./*.deb root)
vmlinuz=$(ls "$work"/root/boot/vmlinuz-*)

mkdir -p "$work"/initrd/{bin,proc,sys,dev}
cp /bin/busybox "$work/initrd/bin/"
for a in sh mount ip poweroff mkdir cat; do ln -s busybox "$work/initrd/bin/$a"; done
CGO_ENABLED=0 go test -c -o "$work/initrd/bpf.test" ./bpf/
CGO_ENABLED=0 go test -c -o "$work/initrd/engine.test" ./engine/
cat >"$work/initrd/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo "== guest kernel $(cat /proc/sys/kernel/osrelease)"
/bpf.test -test.run TestLoadXDP -test.v 2>&1
/engine.test -test.run TestXDP -test.v 2>&1
poweroff -f
INIT
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc 2>/dev/null | gzip >"$work/initrd.gz")
timeout 600 qemu-system-x86_64 -machine accel=tcg -cpu max -m 1024 -nographic -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" | tee "$work/out.log" |
	tr -d '\r' | sed 's/^.*== guest/== guest/' | grep -E '== guest|^(=== RUN|--- |PASS|FAIL)|verified'
grep -q '^FAIL' "$work/out.log" && exit 1
grep -q '^PASS' "$work/out.log"
