// SPDX-License-Identifier: GPL-2.0-only
/*
 * The in-kernel fast path: BPF LSM programs that answer exec/open/mmap(PROT_EXEC) from a verdict
 * the daemon stored on the inode, with no round trip to userspace.
 *
 * Owns: the decision "DANGEROUS and still valid -> -EPERM + ring-buffer record, anything
 * else -> 0" and the invalidation of entries when a file is opened for write or truncated.
 * Hands on: everything that is not a valid DANGEROUS entry goes on to the other LSMs and to
 * fanotify, i.e. to the daemon, which stays the authority.
 *
 * Valid means: generation == config.generation AND inode ctime == ctime stored at scan time.
 * The daemon's own tgid (config.exempt_tgid) is never denied, so it can rescan and quarantine.
 *
 * Maps are pinned by the loader under /sys/fs/bpf/onaccess so enforcement survives the daemon.
 */
#include <linux/bpf.h>
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "verdict.h"

#define EPERM 1
#define FMODE_WRITE 0x2
#define FMODE_EXEC 0x20
#define O_EXEC_FLAG 0x20 /* __FMODE_EXEC as an open flag */
#define PROT_EXEC 0x4

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_INODE_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct verdict_value);
} oa_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct verdict_config);
} oa_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} oa_events SEC(".maps");


static __always_inline struct verdict_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&oa_config, &zero);
}

static __always_inline int exempt(const struct verdict_config *cfg)
{
	return cfg->exempt_tgid && cfg->exempt_tgid == (__u32)(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void inode_ctime(struct inode *inode, __s64 *sec, __u32 *nsec)
{
	if (bpf_core_field_exists(((struct inode___v611 *)0)->i_ctime_sec)) {
		struct inode___v611 *i = (void *)inode;

		*sec = i->i_ctime_sec;
		*nsec = i->i_ctime_nsec;
	} else if (bpf_core_field_exists(((struct inode___v66 *)0)->__i_ctime)) {
		struct inode___v66 *i = (void *)inode;

		*sec = i->__i_ctime.tv_sec;
		*nsec = i->__i_ctime.tv_nsec;
	} else {
		struct inode___v61 *i = (void *)inode;

		*sec = i->i_ctime.tv_sec;
		*nsec = i->i_ctime.tv_nsec;
	}
}

/* 0 or -EPERM for this inode; emits the ring-buffer record on denial. */
static __always_inline int decide(struct inode *inode, __u32 hook)
{
	struct verdict_config *cfg;
	struct verdict_value *v;
	struct block_event *ev;
	__s64 sec;
	__u32 nsec;
	__u64 id;

	if (!inode)
		return 0;
	v = bpf_inode_storage_get(&oa_verdicts, inode, 0, 0);
	if (!v || v->verdict != VERDICT_DANGEROUS)
		return 0;
	cfg = config();
	if (!cfg || exempt(cfg) || v->generation != cfg->generation)
		return 0;
	inode_ctime(inode, &sec, &nsec);
	if (sec != v->ctime_sec || nsec != v->ctime_nsec)
		return 0;

	ev = bpf_ringbuf_reserve(&oa_events, sizeof(*ev), 0);
	if (ev) {
		/* The local type-id relocation (a constant, never 0) keeps struct block_event in
		 * the object's BTF, where the host test compares it with the ctypes mirror. */
		if (bpf_core_type_id_local(struct block_event)) {
			id = bpf_get_current_pid_tgid();
			ev->tgid = id >> 32;
			ev->pid = (__u32)id;
			ev->uid = (__u32)bpf_get_current_uid_gid();
			ev->hook = hook;
			ev->dev = inode->i_sb->s_dev;
			ev->ino = inode->i_ino;
			bpf_get_current_comm(ev->comm, sizeof(ev->comm));
		}
		bpf_ringbuf_submit(ev, 0);
	}
	/* A full ring buffer must not turn a denial into an allow: the record is best effort. */
	return -EPERM;
}

static __always_inline void forget(struct inode *inode)
{
	if (inode)
		bpf_inode_storage_delete(&oa_verdicts, inode);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(oa_exec, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	return decide(bprm->file->f_inode, HOOK_EXEC);
}

SEC("lsm/file_open")
int BPF_PROG(oa_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	/* A write-open may change the content: drop the verdict and let fanotify/the daemon
	 * decide again. Allowed even for a DANGEROUS file so it can be repaired in place; the
	 * ctime check would invalidate the entry after the write anyway. */
	if (file->f_mode & FMODE_WRITE) {
		forget(file->f_inode);
		return 0;
	}
	/* The open done by execve is judged by bprm_check_security, which reports it as "exec". */
	if ((file->f_mode & FMODE_EXEC) || (file->f_flags & O_EXEC_FLAG))
		return 0;
	return decide(file->f_inode, HOOK_OPEN);
}

SEC("lsm/mmap_file")
int BPF_PROG(oa_mmap, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags, int ret)
{
	if (ret)
		return ret;
	if (!file || !(prot & PROT_EXEC))
		return 0;
	return decide(file->f_inode, HOOK_MMAP);
}

/* truncate(2), and ftruncate/O_TRUNC before 6.2 */
SEC("lsm/path_truncate")
int BPF_PROG(oa_path_trunc, const struct path *path, int ret)
{
	forget(path->dentry->d_inode);
	return ret;
}

/* ftruncate(2) and O_TRUNC from 6.2 on; the loader skips it on kernels without the hook. */
SEC("lsm/file_truncate")
int BPF_PROG(oa_file_trunc, struct file *file, int ret)
{
	forget(file->f_inode);
	return ret;
}
