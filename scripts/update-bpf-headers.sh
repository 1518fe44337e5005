#!/bin/bash
# Copies the C headers grain's BPF programs include (bpf/*.c,
# bench/xdp/testdata/*.c) from the installed Debian packages into
# bpf/include, so that `make generate` reads no header of the build host:
# libbpf's (libbpf-dev) and the kernel's UAPI headers (linux-libc-dev).
# Run it after upgrading either package, then `make generate`; the object
# files must not change unless the headers did.
#
#   apt-get install -y libbpf-dev linux-libc-dev
#   scripts/update-bpf-headers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=bpf/include
multiarch=/usr/include/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)

# The headers the build includes, found by the compiler itself (-M), for
# every source and target architecture, from the host's include paths.
deps=$(for src in bpf/xdp.c bpf/hook.c bench/xdp/testdata/baseline.c; do
	for arch in x86 arm64; do
		clang-19 -target bpfel -D__TARGET_ARCH_$arch -nostdinc -idirafter /usr/include -idirafter "$multiarch" \
			-I bpf -M "$src"
	done
done | tr ' \\' '\n\n' | grep '^/usr/include/' | sort -u)

rm -rf "$dest/bpf" "$dest/linux" "$dest/asm" "$dest/asm-generic"
for f in $deps; do
	rel=${f#"$multiarch"/}
	rel=${rel#/usr/include/}
	mkdir -p "$dest/$(dirname "$rel")"
	cp "$f" "$dest/$rel"
done

libbpf=$(dpkg-query -W -f '${Version}' libbpf-dev)
uapi=$(dpkg-query -W -f '${Version}' linux-libc-dev)
cat >"$dest/VERSIONS" <<END
# Written by scripts/update-bpf-headers.sh; see README.md.
libbpf-dev $libbpf
linux-libc-dev $uapi ($(basename "$multiarch"))
END
echo "bpf/include: $(echo "$deps" | wc -l) headers from libbpf-dev $libbpf and linux-libc-dev $uapi"
