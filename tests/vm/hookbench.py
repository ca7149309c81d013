"""Cost of the BPF LSM hooks, measured inside the VM (not a test).

Run by tests/vm/run with ONACCESS_VM_BENCH=1 (or by hand in any BPF-LSM guest, as root):
  python tests/vm/hookbench.py [--execs 200] [--opens 2000]

Warm exec of a copy of /bin/true (posix_spawn + wait) and open+close of one file, first with no
program attached, then with verdict.bpf.o loaded (a SAFE entry on the binary, the common case)
with kernel.bpf_stats_enabled=1. Prints key=value lines: wall time per operation both ways and
run_time_ns/run_cnt per program (ns per hook call).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scanner import bpf  # noqa: E402
from scanner.paths import bpf_object  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def exec_loop(path: str, n: int) -> float:
    t = time.perf_counter_ns()
    for _ in range(n):
        pid = os.posix_spawn(path, [path], {})
        _, status = os.waitpid(pid, 0)
        assert status == 0
    return (time.perf_counter_ns() - t) / n


def open_loop(path: str, n: int) -> float:
    t = time.perf_counter_ns()
    for _ in range(n):
        os.close(os.open(path, os.O_RDONLY))
    return (time.perf_counter_ns() - t) / n


def measure(binary: str, data: str, execs: int, opens: int, rounds: int) -> tuple[float, float]:
    exec_loop(binary, 20)  # warm the page cache and the dynamic loader
    e = statistics.median(exec_loop(binary, execs) for _ in range(rounds))
    o = statistics.median(open_loop(data, opens) for _ in range(rounds))
    return e, o


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--opens", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="onaccess-hb-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "onaccess-hb", str(work)], check=True)
    pin = Path("/sys/fs/bpf/onaccess-hookbench")
    try:
        binary = work / "true"
        shutil.copy2("/bin/true", binary)
        data = work / "data"
        data.write_bytes(b"x" * 4096)

        base_exec, base_open = measure(str(binary), str(data), args.execs, args.opens, args.rounds)

        kv = bpf.KernelVerdicts.open(bpf_object(), pin)
        try:
            kv.set_generation(1)
            for p in (binary, data):
                fd = os.open(p, os.O_RDONLY)
                kv.put(fd, False, 1, os.fstat(fd).st_ctime_ns)
                os.close(fd)
            STATS.write_text("1\n")
            before = kv.prog_stats()
            bpf_exec, bpf_open = measure(str(binary), str(data), args.execs, args.opens, args.rounds)
            after = kv.prog_stats()
            STATS.write_text("0\n")
        finally:
            kv.close()
            bpf.unload(pin)

        print(f"hookbench_kernel={os.uname().release}")
        print(f"exec_ns_baseline={base_exec:.0f}")
        print(f"exec_ns_bpf={bpf_exec:.0f}")
        print(f"exec_ratio={bpf_exec / base_exec:.3f}")
        print(f"open_ns_baseline={base_open:.0f}")
        print(f"open_ns_bpf={bpf_open:.0f}")
        print(f"open_ratio={bpf_open / base_open:.3f}")
        for hook in sorted(after):
            cnt = after[hook][0] - before[hook][0]
            ns = after[hook][1] - before[hook][1]
            per = f"{ns / cnt:.0f}" if cnt else "nan"
            print(f"hook_{hook}_calls={cnt}")
            print(f"hook_{hook}_ns_per_call={per}")
        return 0
    finally:
        subprocess.run(["umount", str(work)], check=False)
        work.rmdir()


if __name__ == "__main__":
    raise SystemExit(main())
