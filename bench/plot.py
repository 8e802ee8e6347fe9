"""Draw docs/bench-NAME.png from a bench/results/*.json file (run by bench/run.py --write-docs).

    .venv-bench/bin/python bench/plot.py bench/results/<timestamp>.json docs/bench-latest.png

Two panels of grouped bars per suite (WSGI, ASGI), one group per scenario and one bar per server:
median req/s (higher is better) and median server CPU µs per request (lower is better).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = data["summary"]
    # one row of panels per suite (wsgi, asgi), each with the servers that ran in it; older result
    # files have no "suites": one row then
    suites = data.get("suites") or {"": data["scenarios"]}
    suites = {k: v for k, v in suites.items() if v}
    fig, axes = plt.subplots(len(suites), 2, figsize=(13, 4.8 * len(suites)), squeeze=False)
    panels = [("rps", "requests/s (median; higher is better)"),
              ("cpu_us_per_req", "server CPU µs per request (median; lower is better)")]
    for (suite, scenarios), ax_row in zip(suites.items(), axes):
        servers = [s for s in data["servers"] if any(r["server"] == s and r["scenario"] in scenarios for r in rows)]
        width = 0.8 / max(len(servers), 1)
        for ax, (key, title) in zip(ax_row, panels):
            for i, server in enumerate(servers):
                vals = []
                for sc in scenarios:
                    r = next((r for r in rows if r["server"] == server and r["scenario"] == sc), None)
                    vals.append(r[key] if r and r.get(key) else 0)
                xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(scenarios))]
                bars = ax.bar(xs, vals, width, label=server)
                for b, v in zip(bars, vals):
                    if v:
                        label = f"{v / 1000:.0f}k" if key == "rps" and v >= 1000 else f"{v:.0f}"
                        ax.annotate(label, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                                    fontsize=6, xytext=(0, 1), textcoords="offset points")
            ax.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
            ax.set_title(f"{suite.upper()}: {title}" if suite else title, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        ax_row[0].legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"{data['started']} · {m['nproc']} CPUs, {m['cpu_model']} · server on CPU 0, wrk on CPU 1 · "
                 f"1 worker each", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
