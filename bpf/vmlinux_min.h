/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The few kernel types verdict.bpf.c touches, written by hand instead of a generated
 * vmlinux.h. Only the fields we read are declared: with preserve_access_index, libbpf
 * relocates every access against the running kernel's BTF (CO-RE), so order and padding
 * here do not matter, names and types do.
 *
 * struct inode's ctime moved twice upstream; the "___flavor" suffix lets one object carry all
 * three shapes (libbpf strips everything after "___" when matching kernel types):
 *   <= 6.5   struct timespec64 i_ctime
 *   6.6-6.10 struct timespec64 __i_ctime
 *   >= 6.11  time64_t i_ctime_sec; u32 i_ctime_nsec
 */
#ifndef ONACCESS_VMLINUX_MIN_H
#define ONACCESS_VMLINUX_MIN_H

#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)
#endif

typedef __u32 u32;
typedef __u64 u64;
typedef __s64 time64_t;
typedef __u32 dev_t;
typedef __u32 fmode_t;
typedef __s64 loff_t;

struct timespec64 {
	time64_t tv_sec;
	long tv_nsec;
};

struct super_block {
	dev_t s_dev;
};

struct inode {
	unsigned short i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
};

struct inode___v61 {
	struct timespec64 i_ctime;
};

struct inode___v66 {
	struct timespec64 __i_ctime;
};

struct inode___v611 {
	time64_t i_ctime_sec;
	u32 i_ctime_nsec;
};

struct dentry {
	struct inode *d_inode;
};

struct vfsmount;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	fmode_t f_mode;
	struct inode *f_inode;
	unsigned int f_flags;
};

struct linux_binprm {
	struct file *file;
};

#ifndef BPF_NO_PRESERVE_ACCESS_INDEX
#pragma clang attribute pop
#endif

#endif
