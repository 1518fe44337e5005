/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The kernel structures the kernel-hook programs read: the few fields named
 * here, relocated by CO-RE against the running kernel's BTF, wherever the
 * kernel puts them. Part of hook.c. */
#ifndef GRAIN_HOOK_KERNEL_H
#define GRAIN_HOOK_KERNEL_H

/* This header stands in for vmlinux.h: libbpf's bpf_tracing.h then names
 * the registers as the kernel's pt_regs does (di, not the UAPI's rdi). */
#define __VMLINUX_H__

/* The argument registers, read by libbpf's PT_REGS_PARM*_CORE (bpf2go
 * sets __TARGET_ARCH_*, which picks the architecture's registers). */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long r10, r9, r8, ax, cx, dx, si, di;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs; /* read as user_pt_regs, which it begins with (and orig_x0) */
struct user_pt_regs {
	__u64 regs[31];
} __attribute__((preserve_access_index));
#else
#error "build with -target amd64 or arm64 (bpf2go sets __TARGET_ARCH_*)"
#endif

#include <bpf/bpf_tracing.h>

/* libbpf 1.1 (bpf/include) reads five arguments; functions and syscalls
 * take six. */
#ifndef PT_REGS_PARM6_CORE
#if defined(__TARGET_ARCH_x86)
#define PT_REGS_PARM6_CORE(x) BPF_CORE_READ(__PT_REGS_CAST(x), r9)
#else
#define PT_REGS_PARM6_CORE(x) BPF_CORE_READ(__PT_REGS_CAST(x), regs[5])
#endif
#endif
#ifndef PT_REGS_PARM6_CORE_SYSCALL
#define PT_REGS_PARM6_CORE_SYSCALL(x) PT_REGS_PARM6_CORE(x)
#endif

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct cred {
	struct {
		__u32 val;
	} uid;
	struct {
		__u32 val;
	} gid;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	const struct cred *cred;
	struct css_set *cgroups;
	struct task_struct *real_parent;
	struct files_struct *files;
	struct bpf_run_ctx *bpf_ctx;
} __attribute__((preserve_access_index));

struct bpf_run_ctx {
} __attribute__((preserve_access_index));

/* What current->bpf_ctx points to while a raw tracepoint program runs
 * (Linux 6.10+, whose raw tracepoints take a cookie). */
struct bpf_trace_run_ctx {
	__u64 bpf_cookie;
} __attribute__((preserve_access_index));

/* Linux 6.2+ (every kernel grain_raw_tracepoint loads on); the verifier
 * turns it into no instruction. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct qstr {
	__u32 len;
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
} __attribute__((preserve_access_index));

struct in6_addr {
	__u8 u6_addr8[16];
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

#endif
