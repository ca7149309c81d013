"""Chart for bench/peers: ratio to no scanner per workload and scanner,
log scale. Reads the peers.json that bench/peers writes; runs under the
venv's python (matplotlib comes with the test extras).

usage: python plot_peers.py peers.json peers.png
"""
from __future__ import annotations

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"w1_exec": "W1 warm exec", "w2_read": "W2 open+read", "w2_grep": "W2 grep -r",
          "w3_write_exec": "W3 write+exec", "w4_untar": "W4 untar"}
COLORS = {"onaccess": "#2a9d8f", "clamav": "#e76f51", "fapolicyd": "#e9c46a"}


def main(src: str, dst: str) -> None:
    res = json.load(open(src))
    sc = res["scanners"]
    base = sc["baseline"]["samples"]
    names = [n for n in sc if n != "baseline"]
    keys = list(LABELS)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(10, 5.2))
    for i, n in enumerate(names):
        ys = [statistics.median(sc[n]["samples"][k]) / statistics.median(base[k]) for k in keys]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(keys))]
        bars = ax.bar(xs, ys, width, label=sc[n]["label"], color=COLORS.get(n))
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(f"×{y:.2f}" if y < 10 else f"×{y:.0f}", (b.get_x() + b.get_width() / 2, y),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [LABELS[k] for k in keys])
    ax.set_ylabel("time ÷ time with no scanner (log scale)")
    info = res["info"]
    ax.set_title(f"On-access scanner overhead — {info['date']}, kernel {info['kernel']}\n{info['machine']}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
