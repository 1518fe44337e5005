#!/usr/bin/env bash
# Runs Go tests inside Debian's stock kernels under QEMU (software emulation,
# no KVM needed): for kernel features this host lacks (kprobes, fentry), for
# older verifiers, and for arm64. As root:
#
#   scripts/vm-test.sh [options] PACKAGE[:REGEX]...
#   scripts/vm-test.sh --arch amd64 ./bpf ./engine/... ./cmd/grain
#   scripts/vm-test.sh --arch arm64 ./bpf:TestLoadTC ./internal/vmtest:TestKprobe
#
# Each PACKAGE (a pattern such as ./engine/... names every package under it
# that has tests) is built into a static test binary (CGO_ENABLED=0
# GOARCH=<arch> go test -c) and run in the guest with -test.v -test.run REGEX
# (REGEX "." when omitted), in that package's directory of a copy of the
# source tree, so that relative paths and testdata work as on the host.
# make test gives whole packages: each test decides for itself, by calling
# vmtest.HostOnly (one kernel shows what it checks: it skips in guests, and
# the summary counts it as host-only) or vmtest.Missing (a kernel feature).
#
# Options:
#   --arch amd64|arm64  guest architecture (default amd64)
#   --kernel PACKAGE    Debian kernel package (default linux-image-6.1.0-56-<arch>;
#                       when the registry no longer has it, the current
#                       linux-image-<arch> is used and named)
#   --suite SUITE       Debian suite to download --kernel from, when it is not
#                       one of the host's (e.g. bullseye, for its 5.10 kernel:
#                       a kernel older than grain supports); its package list
#                       is kept under $GRAIN_VM_CACHE, apart from the host's
#   --deb URL#SHA256    a kernel package by address, checked against its SHA-256
#                       (repeat for a kernel split in several packages, as
#                       Ubuntu's image and modules), instead of --kernel: for
#                       a kernel no Debian suite has (Ubuntu 22.04's 5.15,
#                       grain's minimum)
#   --modules a,b       modules from the kernel package to insmod, with the
#                       modules they depend on (default veth, ifb and
#                       virtio_net with virtio_pci: the guest has two spare
#                       virtio-net NICs, wired to each other through a QEMU
#                       hub and to nothing else, for the tests of native XDP
#                       on a real driver)
#   --features "a b"    kernel features the guest has (spare-nic is added
#                       when virtio_net is loaded): a test that calls
#                       vmtest.Missing for one of them fails instead of
#                       skipping (default "kprobe fentry" on amd64, "kprobe"
#                       on arm64)
#   --timeout SECONDS   the whole guest run, boot included (default 300)
#
# The guest mounts proc, sysfs, devtmpfs, bpffs, tracefs, debugfs, cgroup2 and
# a tmpfs on /tmp, brings lo up, is called grain-vm, and sets GRAIN_VM_KERNEL
# (uname -r), GRAIN_VM_ARCH and GRAIN_VM_FEATURES (see internal/vmtest), and
# GRAIN_BIN, a grain binary built for the guest (for cmd/grain's tests). Its
# commands are busybox's, plus iproute2's ip (for ip netns).
#
# Output: "== guest kernel <release> (<arch>)", then every test binary's -v
# output, then one summary line. Exit status 1 when a test failed, a package
# ran no test, a module did not load, the kernel warned (WARNING:/BUG:), or the
# guest crashed (an oops or a soft lockup panics it) or timed out.
#
# What it needs is installed when missing (apt-get: qemu-system-x86 or
# qemu-system-arm, cpio; dpkg --add-architecture arm64). Kernel and busybox
# packages are fetched with apt-get download into $GRAIN_VM_CACHE (default
# /var/cache/grain-vm) and unpacked there once.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
GO=${GO:-go}

arch=amd64 kpkg= suite= modules=veth,ifb,virtio_pci,virtio_net features=unset vm_timeout=300
entries=() kdebs=()
while [ $# -gt 0 ]; do
	case $1 in
	--arch) arch=$2; shift 2 ;;
	--kernel) kpkg=$2; shift 2 ;;
	--suite) suite=$2; shift 2 ;;
	--deb) kdebs+=("$2"); shift 2 ;;
	--modules) modules=$2; shift 2 ;;
	--features) features=$2; shift 2 ;;
	--timeout) vm_timeout=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "vm-test: unknown option $1" >&2; exit 2 ;;
	*) entries+=("$1"); shift ;;
	esac
done
[ ${#entries[@]} -gt 0 ] || { echo "vm-test: no PACKAGE given (see --help)" >&2; exit 2; }

case $arch in
amd64)
	qemu=qemu-system-x86_64 qemu_pkg=qemu-system-x86 console=ttyS0
	# One host thread for both vCPUs (thread=single): with a thread per
	# vCPU, live kernel text patching (a static key flipped as the first
	# raw sys_enter program attaches or the last detaches, while another
	# vCPU runs through that site) left a vCPU spinning in
	# syscall_trace_enter until the soft-lockup detector fired, in about
	# one run of three.
	machine=(-machine q35 -accel tcg,thread=single -cpu max)
	[ "$features" != unset ] || features="kprobe fentry"
	;;
arm64)
	# pauth-impdef: QEMU's own pointer-authentication hash, much faster to
	# emulate than the architected one.
	qemu=qemu-system-aarch64 qemu_pkg=qemu-system-arm console=ttyAMA0
	machine=(-machine virt -accel tcg,thread=single -cpu max,pauth-impdef=on)
	[ "$features" != unset ] || features="kprobe"
	;;
*) echo "vm-test: --arch must be amd64 or arm64" >&2; exit 2 ;;
esac
# With its driver loaded, the spare NIC is a feature the tests may count on.
case ,$modules, in *,virtio_net,*) features="$features spare-nic" ;; esac
pinned=linux-image-6.1.0-56-$arch
kpkg=${kpkg:-$pinned}
cache=${GRAIN_VM_CACHE:-/var/cache/grain-vm}
start=$SECONDS

# --- What the host needs.
need=()
command -v "$qemu" >/dev/null || need+=("$qemu_pkg")
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
[ ${#kdebs[@]} -eq 0 ] || command -v curl >/dev/null || need+=(curl)
updated=0
apt_update() { [ $updated = 1 ] || { apt-get update -qq; updated=1; }; }
if [ "$arch" != "$(dpkg --print-architecture)" ] &&
	! dpkg --print-foreign-architectures | grep -qx "$arch"; then
	dpkg --add-architecture "$arch"
	apt_update
fi
if [ ${#need[@]} -gt 0 ]; then
	echo "vm-test: installing ${need[*]}"
	apt_update
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- Kernel, busybox and iproute2 packages, downloaded and unpacked once.
mkdir -p "$cache/debs" "$cache/root"
exec 9>"$cache/.lock"
flock 9 # one runner at a time fetches and unpacks
# suite_apt ARGS: apt-get with $suite's main as its only source, its package
# lists and cache under $cache/apt-$suite (the host's stay as they are).
suite_apt() {
	local d=$cache/apt-$suite
	mkdir -p "$d/lists/partial" "$d/archives/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" >"$d/sources.list"
	apt-get -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$d/lists" -o Dir::Cache="$d" -o APT::Sandbox::User=root "$@"
}
# fetch NAME: the path of NAME's .deb for $arch in the cache, downloading it
# (apt-get download, refreshing the package lists once if needed).
fetch() {
	local name=$1 debs tmp
	debs=("$cache"/debs/"$name"_*_"$arch".deb)
	if [ ! -f "${debs[-1]}" ] && [ -n "$suite" ] && [ "$name" = "$kpkg" ]; then
		tmp=$(mktemp -d "$cache/debs/.dl.XXXXXX")
		{ suite_apt update -qq && (cd "$tmp" && suite_apt download -q=2 "$name:$arch"); } || { rm -rf "$tmp"; return 1; }
		mv "$tmp"/*.deb "$cache/debs/" && rmdir "$tmp"
		debs=("$cache"/debs/"$name"_*_"$arch".deb)
	fi
	if [ ! -f "${debs[-1]}" ]; then
		tmp=$(mktemp -d "$cache/debs/.dl.XXXXXX")
		if ! (cd "$tmp" && apt-get download -q=2 -o APT::Sandbox::User=root "$name:$arch" 2>/dev/null); then
			apt_update
			(cd "$tmp" && apt-get download -q=2 -o APT::Sandbox::User=root "$name:$arch") || { rm -rf "$tmp"; return 1; }
		fi
		mv "$tmp"/*.deb "$cache/debs/" && rmdir "$tmp"
		debs=("$cache"/debs/"$name"_*_"$arch".deb)
	fi
	echo "${debs[-1]}"
}
# unpack NAME: the directory holding NAME's package unpacked.
unpack() {
	local deb dir
	deb=$(fetch "$1") || return 1
	dir=$cache/root/$(basename "$deb" .deb)
	if [ ! -d "$dir" ]; then
		rm -rf "$dir.tmp"
		dpkg-deb -x "$deb" "$dir.tmp"
		mv "$dir.tmp" "$dir"
	fi
	echo "$dir"
}
# unpack_urls: the directory holding the --deb packages unpacked together,
# each downloaded once and checked against its SHA-256.
unpack_urls() {
	local d url sum f dir
	dir=$cache/root/url-$(printf '%s\n' "${kdebs[@]}" | sha256sum | cut -c1-16)
	if [ ! -d "$dir" ]; then
		rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
		for d in "${kdebs[@]}"; do
			url=${d%#*} sum=${d##*#} f=$cache/debs/${d##*/}
			f=${f%#*}
			if ! [ -f "$f" ] || ! echo "$sum  $f" | sha256sum -c --quiet >/dev/null 2>&1; then
				curl -fsS --retry 3 -m 900 -o "$f.tmp" "$url" || { echo "vm-test: cannot download $url" >&2; return 1; }
				echo "$sum  $f.tmp" | sha256sum -c --quiet >/dev/null 2>&1 ||
					{ echo "vm-test: $url does not have SHA-256 $sum" >&2; rm -f "$f.tmp"; return 1; }
				mv "$f.tmp" "$f"
			fi
			dpkg-deb -x "$f" "$dir.tmp"
		done
		mv "$dir.tmp" "$dir"
	fi
	echo "$dir"
}
if [ ${#kdebs[@]} -gt 0 ]; then
	kpkg=${kdebs[0]##*/} kpkg=${kpkg%%_*}
	kroot=$(unpack_urls) || exit 1
elif ! kroot=$(unpack "$kpkg"); then
	[ "$kpkg" = "$pinned" ] || { echo "vm-test: cannot download $kpkg for $arch${suite:+ from $suite}" >&2; exit 1; }
	kpkg=$(apt-cache depends "linux-image-$arch:$arch" | awk '/Depends: linux-image-/ {sub(/:.*/, "", $2); print $2; exit}')
	echo "vm-test: $pinned is gone from the registry; using the current $kpkg"
	kroot=$(unpack "$kpkg")
fi
bbroot=$(unpack busybox-static)
# iproute2's ip (busybox's has no "ip netns", which internal/netns uses) and
# the libraries it links, as Debian 12 builds it.
userland=()
for p in iproute2 libc6 libbpf1 libelf1 libmnl0 libbsd0 libcap2 zlib1g libmd0; do
	userland+=("$(unpack "$p")")
done
exec 9>&-
vmlinuz=$(ls "$kroot"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$kroot/lib/modules/$kver

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
initrd=$work/initrd
mkdir -p "$initrd"/{bin,dev,proc,sys,tmp,t,src,lib/modules}
for d in "${userland[@]}"; do
	tar -C "$d" --exclude=./usr/share --exclude='./usr/lib/*/gconv' --exclude=./etc -cf - . |
		tar -C "$initrd" --keep-directory-symlink -xf -
done
cp "$bbroot/bin/busybox" "$initrd/bin/" && ln -s busybox "$initrd/bin/sh"

# --- Modules and the modules they depend on (the depends= field of their
# .modinfo), in load order.
declare -A added=()
mods=()
find "$moddir/kernel" -name '*.ko*' >"$work/modules.list"
add_module() {
	local m=${1//-/_} f deps d
	[ -z "${added[$m]:-}" ] || return 0
	added[$m]=1
	f=$(grep -E "/(${m}|${m//_/-})\.ko(\.xz|\.zst|\.gz)?$" "$work/modules.list" | head -1) || true
	if [ -z "$f" ]; then
		grep -qE "/(${m}|${m//_/-})\.ko$" "$moddir/modules.builtin" 2>/dev/null && return 0
		echo "vm-test: module $m is neither in $kpkg nor built in" >&2
		exit 1
	fi
	case $f in
	*.xz) xz -dc "$f" ;; *.zst) zstd -dc "$f" ;; *.gz) gzip -dc "$f" ;; *) cat "$f" ;;
	esac >"$initrd/lib/modules/$m.ko"
	deps=$(tr '\0' '\n' <"$initrd/lib/modules/$m.ko" | grep -a -m1 '^depends=' | cut -d= -f2) || true
	for d in ${deps//,/ }; do add_module "$d"; done
	mods+=("$m")
}
for m in ${modules//,/ }; do add_module "$m"; done

# --- Test binaries and the source tree they run in.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; } # single-quoted for sh
# Tracked and untracked-but-not-ignored files, as the working tree has them,
# but no stray build output (files over 4 MiB).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z -co --exclude-standard
else
	find . -path ./.git -prune -o -type f -print0
fi | while IFS= read -r -d '' f; do
	[ ! -f "$f" ] || [ "$(stat -c %s "$f")" -gt 4194304 ] || printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$initrd/src"
# Go's own timeout first, so that a hung test prints its goroutines.
test_timeout=$((vm_timeout - vm_timeout / 10 - 5))
[ $test_timeout -ge 1 ] || test_timeout=1
runs=
pids=()
declare -A built=()
for e in "${entries[@]}"; do
	pattern=${e%%:*} regex=.
	[[ $e != *:* ]] || regex=${e#*:}
	# A pattern (./engine/...) is every package under it that has tests.
	dirs=$(GOARCH=$arch $GO list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.Dir}}{{end}}' "$pattern")
	[ -n "$dirs" ] || { echo "vm-test: $pattern has no package with tests" >&2; exit 2; }
	for dir in $dirs; do
		rel=$(realpath --relative-to=. "$dir")
		pkg=./$rel bin=${rel//\//_}.test
		if [ -z "${built[$bin]:-}" ]; then
			built[$bin]=1
			CGO_ENABLED=0 GOARCH=$arch $GO test -c -ldflags='-s -w' -o "$initrd/t/$bin" "$pkg" &
			pids+=($!)
		fi
		runs+="echo $(q "== run $pkg -test.run $regex")
(cd /src/$(q "$rel") && /t/$bin -test.v -test.timeout ${test_timeout}s -test.run $(q "$regex") 2>&1)
echo $(q "== exit $pkg ")\$?
"
	done
done
# The grain binary, for the end-to-end tests (cmd/grain's buildGrain reads
# GRAIN_BIN: there is no Go toolchain in the guest).
CGO_ENABLED=0 GOARCH=$arch $GO build -ldflags='-s -w' -o "$initrd/t/grain" ./cmd/grain &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done

cat >"$initrd/init" <<INIT
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/tmp TMPDIR=/tmp
mkdir -p /run /var && ln -s /run /var/run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /sys/fs/bpf /sys/kernel/tracing /sys/kernel/debug /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname grain-vm
ip link set lo up
export GRAIN_VM_KERNEL=\$(uname -r) GRAIN_VM_ARCH=$arch GRAIN_VM_FEATURES=$(q "$features") GRAIN_BIN=/t/grain
echo "== guest kernel \$GRAIN_VM_KERNEL ($arch): \$(uname -v), \$(nproc) CPUs, features: \$GRAIN_VM_FEATURES"
for m in ${mods[*]}; do insmod /lib/modules/\$m.ko || echo "== insmod \$m failed"; done
[ -z "${mods[*]}" ] || echo "== modules loaded:" \$(cut -d' ' -f1 /proc/modules)
$runs
echo "== done"
poweroff -f
INIT
chmod +x "$initrd/init"
# Uncompressed: unpacking is faster than decompressing in an emulated CPU.
(cd "$initrd" && find . | cpio -o -H newc --quiet >"$work/initrd.cpio")

# --- Boot. The console carries the test output; everything from the guest's
# first line on is shown as it comes.
log=$work/console.log
boot=$SECONDS
set +e
timeout -k 5 "$vm_timeout" "$qemu" "${machine[@]}" -smp 2 -m 1536 \
	-nodefaults -no-user-config -display none -serial stdio -no-reboot \
	-netdev hubport,id=nic0,hubid=0 -device virtio-net-pci,netdev=nic0 \
	-netdev hubport,id=nic1,hubid=0 -device virtio-net-pci,netdev=nic1 \
	-kernel "$vmlinuz" -initrd "$work/initrd.cpio" \
	-append "console=$console quiet panic=-1 oops=panic softlockup_panic=1 watchdog_thresh=60" </dev/null \
	2> >(grep -v 'hub 0 is not connected to host network' >&2) | # by design: the NICs are wired to each other only
	sed -u 's/\r//g' | tee "$log" | sed -u -n '/== guest kernel/,$ { s/^.*== guest kernel/== guest kernel/; p }'
rc=${PIPESTATUS[0]}
set -e

# --- Verdict.
awk -v arch="$arch" -v kpkg="$kpkg" -v rc="$rc" -v timeout="$vm_timeout" \
	-v prep=$((boot - start)) -v vm=$((SECONDS - boot)) '
/^== guest kernel/ { kernel = $4 }
/^== run / { cur = ++n; entry[n] = $3 ":" $5 }
/^=== RUN / && cur { tests[cur]++ }
/^=== RUN / { hostonly = 0 }
/^ +[^ ]+:[0-9]+: host-only: / { hostonly = 1 } # vmtest.HostOnly: counted, not listed
/^--- PASS/ { pass++ } /^--- FAIL/ { fail++; failed = failed " " $3 }
/^--- SKIP/ { if (hostonly) host++; else { skip++; skipped = skipped " " $3 } }
/^== exit / { if ($NF != 0) bad = bad " " $3 " exited " $NF ";"; cur = 0 }
/^== done/ { done = 1 }
/^== insmod .* failed/ { bad = bad " insmod " $3 " failed;" }
/WARNING: CPU: |BUG: / && !kbug++ { bad = bad " kernel warning or bug (see above);" }
END {
	for (i = 1; i <= n; i++) if (!tests[i]) bad = bad " " entry[i] " ran no test;"
	if (!done) bad = bad (rc == 124 ? " guest timed out after " timeout " s;" : " guest stopped before the end (exit " rc ");")
	if (kernel == "") kernel = kpkg " (did not start init)"
	printf "== %s guest %s: %d passed, %d failed, %d skipped%s, %d host-only; %d s (%d s before boot) %s\n",
		arch, kernel, pass, fail, skip, (skip ? " (" substr(skipped, 2) ")" : ""), host, prep + vm, prep,
		(bad == "" ? "ok" : "FAILED:" bad)
	exit bad != ""
}' "$log" && exit 0
# On a crash, show the end of the console, kernel messages included.
grep -q '^== done' "$log" || { echo "== last console lines:"; tail -n 40 "$log"; }
exit 1
