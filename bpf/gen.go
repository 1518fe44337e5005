// Package bpf holds grain's generic eBPF programs (C sources), their
// bpf2go-generated Go bindings with committed objects, and the loaders,
// feature probes and attachers that put them into the kernel.
package bpf

// The objects are committed so that `go build` needs no clang; `make
// generate` rebuilds them with Debian's clang-19.
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -nostdinc -Iinclude" -target bpfel -type grain_gen_config -type grain_cidr_key -type grain_iface_key -type grain_rule -type grain_content -type grain_counter -type grain_event -type grain_event_payload -type grain_bitmap -type grain_active -type grain_gate xdp xdp.c -- -I.

// The probe programs read pt_regs, which differ between architectures:
// one object per target (probe_x86_bpfel.o, probe_arm64_bpfel.o).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -nostdinc -Iinclude" -target amd64,arm64 -type grain_probe_active -type grain_probe_arg -type grain_probe_hook -type grain_probe_syscall -type grain_probe_selector -type grain_probe_label -type grain_probe_rule -type grain_probe_filter -type grain_probe_value_key -type grain_probe_string_key -type grain_probe_counter -type grain_probe_rate -type grain_probe_count_key -type grain_probe_count_key_small -type grain_probe_count -type grain_probe_nesting probe probe.c -- -I.

// The constants C and Go share are enums in grain.h and probe.h; their Go
// names are written from the objects' BTF (bpf/internal/genconst).
//go:generate go run ./internal/genconst -o limits.go -header grain.h xdp_bpfel.o
//go:generate go run ./internal/genconst -o probe_limits.go -header probe.h probe_x86_bpfel.o probe_arm64_bpfel.o
