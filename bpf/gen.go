// Package bpf holds grain's generic eBPF programs (C sources), their
// bpf2go-generated Go bindings with committed objects, and the loaders,
// feature probes and attachers that put them into the kernel.
package bpf

// The objects are committed so that `go build` needs no clang; `make
// generate` rebuilds them with Debian's clang-19.
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -nostdinc -Iinclude" -target bpfel -type grain_gen_config -type grain_cidr_key -type grain_cidr_index -type grain_iface_key -type grain_rule -type grain_content -type grain_counter -type grain_event -type grain_event_payload -type grain_event_hello -type grain_sni_key -type grain_bitmap -type grain_active -type grain_gate xdp xdp.c -- -I.

// The hook programs read pt_regs, which differ between architectures:
// one object per target (hook_x86_bpfel.o, hook_arm64_bpfel.o).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -nostdinc -Iinclude" -target amd64,arm64 -type grain_hook_active -type grain_hook_arg -type grain_hook -type grain_hook_syscall -type grain_hook_selector -type grain_hook_label -type grain_hook_rule -type grain_hook_filter -type grain_hook_value_key -type grain_hook_string_key -type grain_hook_counter -type grain_hook_rate -type grain_hook_count_key -type grain_hook_count_key_small -type grain_hook_count -type grain_hook_nesting -type grain_hook_count_pending hook hook.c -- -I.

// The constants C and Go share are enums in grain.h and hook.h; their Go
// names are written from the objects' BTF (bpf/internal/genconst).
//go:generate go run ./internal/genconst -o limits.go -header grain.h xdp_bpfel.o
//go:generate go run ./internal/genconst -o hook_limits.go -header hook.h hook_x86_bpfel.o hook_arm64_bpfel.o
