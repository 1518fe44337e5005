// Package xdp benchmarks grain's generic XDP program with
// BPF_PROG_TEST_RUN beside two baselines measured in the same run (see
// testdata/baseline.c). Run: make bench-xdp.
package xdp

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -nostdinc -I../../bpf/include" -target bpfel baseline testdata/baseline.c
