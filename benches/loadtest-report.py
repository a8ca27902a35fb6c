#!/usr/bin/env python3
"""The table and the chart of one benches/loadtest.sh run.

    python3 benches/loadtest-report.py RUN.jsonl RUN.md RUN.png

RUN.jsonl holds the harness's JSON lines (one per scenario and MTA) and the
acceptance-latency line. RUN.md gets the ratio table; RUN.png a chart of
ringpost's throughput and CPU per message against Postfix's, per scenario
(matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, md_out, png_out = sys.argv[1:4]
rows = [json.loads(line) for line in open(src) if line.startswith("{")]
runs = [r for r in rows if "mta" in r]
latency = [r for r in rows if "p99_ms" in r]


def scenario(r):
    return f"{r['sessions']}:{r['msgs']}:{r['size']}:{r['rcpts']}" + (
        ":reuse" if r["conn"] == "reuse" else ""
    )


by = {}
for r in runs:
    by.setdefault(scenario(r), {})[r["mta"]] = r
pairs = [(k, m["postfix"], m["ringpost"]) for k, m in by.items() if "postfix" in m and "ringpost" in m]


def of_floor(k, r):
    """ringpost's e2e as a share of the relay floor's (benches/relay_floor.rs)."""
    floor = by[k].get("floor")
    if not floor:
        return "-", "-"
    return f"{floor['e2e_msgs_per_s']:.0f}", f"{100 * r['e2e_msgs_per_s'] / floor['e2e_msgs_per_s']:.0f}%"


lines = [
    "| scenario | Postfix e2e msg/s | ringpost e2e msg/s | e2e ratio | accept ratio "
    "| Postfix CPU µs/msg | ringpost CPU µs/msg | CPU ratio | ringpost e2e / sink-direct "
    "| relay floor e2e msg/s | ringpost / floor |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for k, p, r in pairs:
    floor, share = of_floor(k, r)
    lines.append(
        f"| `{k}` | {p['e2e_msgs_per_s']:.0f} | {r['e2e_msgs_per_s']:.0f} | "
        f"**{r['e2e_msgs_per_s'] / p['e2e_msgs_per_s']:.2f}x** | "
        f"{r['accept_msgs_per_s'] / p['accept_msgs_per_s']:.2f}x | "
        f"{p['mta_cpu_us_per_msg']} | {r['mta_cpu_us_per_msg']} | "
        f"1/{p['mta_cpu_us_per_msg'] / r['mta_cpu_us_per_msg']:.1f} | "
        f"{100 * r['e2e_msgs_per_s'] / r['sink_direct_msgs_per_s']:.0f}% | "
        f"{floor} | **{share}** |"
    )
for lat in latency:
    lines.append(
        f"\nAcceptance latency (end of DATA to 250), {lat['sessions']} sessions, "
        f"{lat['messages']} x {lat['size']} B: p50 {lat['p50_ms']:.2f} ms, "
        f"p90 {lat['p90_ms']:.2f} ms, **p99 {lat['p99_ms']:.2f} ms**, "
        f"max {lat['max_ms']:.2f} ms ({lat['failed']} failed)."
    )
open(md_out, "w").write("\n".join(lines) + "\n")

if pairs:
    names = [k for k, _, _ in pairs]
    speed = [r["e2e_msgs_per_s"] / p["e2e_msgs_per_s"] for _, p, r in pairs]
    cpu = [p["mta_cpu_us_per_msg"] / r["mta_cpu_us_per_msg"] for _, p, r in pairs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ys = range(len(names))
    left.barh(ys, speed, color="#2f6db5")
    left.set_title("Throughput, ringpost / Postfix (end to end)")
    right.barh(ys, cpu, color="#3a9a5b")
    right.set_title("CPU per message, Postfix / ringpost")
    for ax, values in ((left, speed), (right, cpu)):
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.axvline(1, color="grey", linewidth=0.8)
        ax.set_xlabel("times")
        for y, v in zip(ys, values):
            ax.text(v, y, f" {v:.1f}x", va="center")
        ax.set_xlim(0, max(values) * 1.2)
    right.set_yticklabels([])
    stamp = open(src).readline()[2:22]
    fig.suptitle(f"ringpost vs Postfix 3.7, loopback relay with fsync before 250, 2 vCPUs ({stamp})")
    fig.tight_layout()
    fig.savefig(png_out, dpi=100)
