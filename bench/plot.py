"""Draw docs/bench-NAME.png from a bench/results/*.json file (run by bench/run.py --write-docs).

    .venv-bench/bin/python bench/plot.py bench/results/<timestamp>.json docs/bench-latest.png

Two panels of grouped bars, one group per scenario and one bar per server: median req/s (higher is
better) and median server CPU µs per request (lower is better).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = data["summary"]
    scenarios = data["scenarios"]
    servers = [s for s in data["servers"] if any(r["server"] == s for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(len(servers), 1)
    panels = [("rps", "requests/s (median; higher is better)", 1.0),
              ("cpu_us_per_req", "server CPU µs per request (median; lower is better)", 1.0)]
    for ax, (key, title, scale) in zip(axes, panels):
        for i, server in enumerate(servers):
            vals = []
            for sc in scenarios:
                r = next((r for r in rows if r["server"] == server and r["scenario"] == sc), None)
                vals.append((r[key] or 0) * scale if r and r.get(key) else 0)
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(scenarios))]
            bars = ax.bar(xs, vals, width, label=server)
            for b, v in zip(bars, vals):
                if v:
                    label = f"{v / 1000:.0f}k" if key == "rps" and v >= 1000 else f"{v:.0f}"
                    ax.annotate(label, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                                fontsize=6, xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"{data['started']} · {m['nproc']} CPUs, {m['cpu_model']} · server on CPU 0, wrk on CPU 1 · "
                 f"1 worker each", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
