"""bench's outputs from a report dict (BenchReport.to_dict): a rich table, CSV rows, a matplotlib plot."""

from __future__ import annotations

import csv
import io

from rich.table import Table

SHORT = {
    "ours": "ours",
    "sdpa-flash": "flash",
    "sdpa-cudnn": "cudnn",
    "sdpa-efficient": "effic.",
    "flex": "flex",
}
STATUS_TEXT = {"unsupported": "n/a", "wrong": "WRONG", "error": "error", "not built": "not built"}
CSV_FIELDS = (
    "workload",
    "group",
    "variant",
    "method",
    "status",
    "median_us",
    "p20_us",
    "p80_us",
    "tflops",
    "gbps",
    "pct_of_peak",
    "bound",
    "speedup",
    "max_abs_err",
    "tolerance",
    "note",
)


def peaks_line(report: dict) -> str:
    d = report["device"]
    return (
        f"{d['name']}: {d['num_sms']} SMs, copy {d['copy_gbps']:.0f} GB/s (read + write), "
        f"bf16 matmul {d['matmul_tflops']:.0f} TFLOP/s (measured now)"
    )


def method_names(report: dict) -> list[str]:
    names: list[str] = []
    for row in report["rows"]:
        for m in row["methods"]:
            if m["name"] not in names:
                names.append(m["name"])
    return names


def table(report: dict) -> Table:
    t = Table(title=peaks_line(report), title_justify="left")
    t.add_column("workload", no_wrap=True)
    for col in ("ours us", "TFLOP/s", "GB/s", "% peak"):
        t.add_column(col, justify="right")
    baselines = [n for n in method_names(report) if n != "ours"]
    for name in baselines:
        t.add_column(f"{SHORT.get(name, name)} us", justify="right")
    t.add_column("speedup", justify="right")
    for row in report["rows"]:
        methods = {m["name"]: m for m in row["methods"]}
        ours = methods.get("ours", {"status": "error", "median_us": None})
        cells = [row["workload"]["name"], _time(ours)]
        if ours.get("median_us"):
            peak = f"{ours['pct_of_peak']:.0f}% {row['bound'][:3]}"
            cells += [f"{ours['tflops']:.1f}", f"{ours['gbps']:.0f}", peak]
        else:
            cells += ["", "", ""]
        cells += [_time(methods[n]) if n in methods else "" for n in baselines]
        speedup = row["speedup"]
        cells.append("" if speedup is None else f"[{'green' if speedup >= 1 else 'red'}]{speedup:.2f}x[/]")
        t.add_row(*cells)
    return t


def _time(m: dict) -> str:
    if m["status"] == "ok":
        return f"{m['median_us']:.1f}"
    return f"[yellow]{STATUS_TEXT.get(m['status'], m['status'])}[/]"


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        for m in row["methods"]:
            writer.writerow(
                {
                    "workload": row["workload"]["name"],
                    "group": row["workload"]["group"],
                    "variant": row["variant"],
                    "method": m["name"],
                    "bound": row["bound"],
                    "speedup": row["speedup"] if m["name"] == "ours" else None,
                    **{k: m[k] for k in CSV_FIELDS if k in m and k != "name"},
                }
            )
    return buf.getvalue()


def plot(report: dict, path: str) -> None:
    """Per workload, our speedup over each peer (peer time / our time, log scale; > 1: ours is faster),
    with our own time in the label."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'flashinfer-build[bench]'") from None
    rows = report["rows"]
    peers = [n for n in method_names(report) if n != "ours"]
    height = 0.8 / max(len(peers), 1)
    fig, ax = plt.subplots(figsize=(10, 1.5 + len(rows) * (0.1 * max(len(peers), 1) + 0.12)))
    labels = []
    for row in rows:
        methods = {m["name"]: m for m in row["methods"]}
        ours = methods.get("ours", {})
        ours_us = ours.get("median_us") if ours.get("status") == "ok" else None
        labels.append(f"{row['workload']['name']} ({ours_us:.0f} us)" if ours_us else row["workload"]["name"])
    for i, name in enumerate(peers):
        ys, xs = [], []
        for r, row in enumerate(rows):
            methods = {m["name"]: m for m in row["methods"]}
            ours, peer = methods.get("ours", {}), methods.get(name, {})
            if ours.get("status") == "ok" and peer.get("status") == "ok":
                ys.append(r + i * height)
                xs.append(peer["median_us"] / ours["median_us"])
        if ys:
            ax.barh(ys, [x - 1 for x in xs], left=1.0, height=height, label=name, color=f"C{i}")
    ax.set_yticks([r + (len(peers) - 1) * height / 2 for r in range(len(rows))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    as_ratio = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x")
    ax.xaxis.set_major_formatter(as_ratio)
    low, high = ax.get_xlim()
    if high / low < 20:  # minor labels only where they do not crowd
        ax.xaxis.set_minor_formatter(as_ratio)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("our speedup over each peer (peer time / our time, log scale; right of 1: ours is faster)")
    ax.set_title(peaks_line(report).replace(": ", "\n", 1), fontsize=9)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
