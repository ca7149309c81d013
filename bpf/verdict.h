/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Layouts shared between bpf/verdict.bpf.c and scanner/bpf.py (ctypes).
 *
 * Every struct here is mirrored field by field in scanner/bpf.py; tests/test_bpf_build.py
 * reads the BTF of the compiled object and fails if sizes or offsets drift. Fields are
 * ordered and sized so that no implicit padding exists (explicit _pad fields instead), which
 * keeps the ctypes mirror trivial.
 */
#ifndef ONACCESS_VERDICT_H
#define ONACCESS_VERDICT_H

/* verdict_value.verdict */
#define VERDICT_UNKNOWN   0
#define VERDICT_SAFE      1
#define VERDICT_DANGEROUS 2

/* block_event.hook */
#define HOOK_EXEC 1
#define HOOK_OPEN 2
#define HOOK_MMAP 3

#define ONACCESS_COMM_LEN 16

/* Value of the inode-storage map, written by the daemon through a file fd. */
struct verdict_value {
	__u32 verdict;     /* VERDICT_* */
	__u32 ctime_nsec;  /* inode ctime at scan time: nanoseconds part */
	__s64 ctime_sec;   /* inode ctime at scan time: seconds part */
	__u64 generation;  /* rules generation the verdict was computed with */
};

/* The single entry (key 0) of the config array map. An array map rather than .bss globals so
 * that a restarted daemon which reuses the pinned maps can still update it. */
struct verdict_config {
	__u64 generation;   /* current rules generation; entries with another one are ignored */
	__u32 exempt_tgid;  /* the daemon (global pid namespace); 0 = nobody */
	__u32 obj_tag;      /* loader-written, unused here: first 4 bytes of sha256(verdict.bpf.o),
	                     * so a daemon of another build replaces the pinned programs */
};

/* Ring-buffer record, one per denial. */
struct block_event {
	__u32 tgid;
	__u32 pid;
	__u32 uid;
	__u32 hook;        /* HOOK_* */
	__u64 dev;         /* kernel dev_t encoding (major << 20 | minor) */
	__u64 ino;
	char comm[ONACCESS_COMM_LEN];
};

#endif
