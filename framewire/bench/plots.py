"""Plots of a results document (matplotlib, Agg backend, PNG files):

- ``latency_cdf.png``: end-to-end latency CDF, one panel per scenario, one line per target;
- ``sessions.png``: throughput and p99 against the number of sessions, per target;
- ``batch_sizes.png``: how many frames ran in batches of each size (FrameWire).

Each function returns the file it wrote, or None when the data has nothing to show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLORS = {"framewire": "#d1495b", "starlette": "#00798c", "websockets": "#edae49"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def latency_cdf(
    summaries: Sequence[Mapping[str, Any]], path: Path, scenarios: Sequence[str] | None = None
) -> Path | None:
    names = list(scenarios or dict.fromkeys(s["scenario"] for s in summaries))
    names = [n for n in names if any(s["scenario"] == n and s["cdf_ms"] for s in summaries)]
    if not names:
        return None
    plt = _pyplot()
    fig = cdf_figure(summaries, names)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cdf_figure(summaries: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Any:
    """The latency CDF panels, one per scenario. The log axis is labelled at 1, 2 and 5 of
    each decade only, in plain numbers: matplotlib's default labels minor ticks too when a
    panel spans less than a decade, and they run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _pyplot()
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for s in summaries:
            if s["scenario"] != name or not s["cdf_ms"]:
                continue
            xs, ys = zip(*s["cdf_ms"], strict=True)
            ax.plot(xs, ys, label=s["target"], color=COLORS.get(s["target"]), linewidth=1.6)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("end-to-end latency, ms (log)")
        ax.set_ylabel("fraction of frames")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
        ax.legend(fontsize=8, loc="lower right")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="both", labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def sessions(summaries: Sequence[Mapping[str, Any]], scenarios: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Throughput and p99 against sessions, for scenarios that differ only in sessions."""
    sessions_of = {sc["name"]: sc["sessions"] for sc in scenarios}
    series: dict[str, list[tuple[int, float, float]]] = {}
    for s in summaries:
        n = sessions_of.get(s["scenario"])
        if n is None or not s["latency_ms"].get("count"):
            continue
        series.setdefault(s["target"], []).append((n, s["throughput_fps"], s["latency_ms"]["p99"]))
    if not series or max(len({n for n, _, _ in pts}) for pts in series.values()) < 2:
        return None
    plt = _pyplot()
    fig, (ax_fps, ax_p99) = plt.subplots(1, 2, figsize=(10, 3.6))
    for target, points in series.items():
        points.sort()
        ns, fps, p99 = zip(*points, strict=True)
        style = {"label": target, "color": COLORS.get(target), "marker": "o", "linewidth": 1.6}
        ax_fps.plot(ns, fps, **style)
        ax_p99.plot(ns, p99, **style)
    counts = sorted({n for points in series.values() for n, _, _ in points})
    for ax, label in ((ax_fps, "frames/s (received)"), (ax_p99, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_xlabel("concurrent sessions (closed loop)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_p99.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def batch_sizes(summaries: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Share of frames per batch size: one panel per FrameWire scenario."""
    rows = [s for s in summaries if s["target"] == "framewire" and s.get("batch_sizes")]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n_rows, cols = _grid(len(rows))
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.6 * cols, 2.8 * n_rows), squeeze=False)
    for ax, s in zip(axes.flat, rows, strict=False):
        sizes = sorted(int(k) for k in s["batch_sizes"])
        total = sum(s["batch_sizes"].values())
        ax.bar(sizes, [s["batch_sizes"][str(b)] / total for b in sizes], color=COLORS["framewire"], width=0.8)
        ax.set_title(s["scenario"], fontsize=9)
        ax.set_xlabel("batch size (frames per handler call)")
        ax.set_ylabel("share of frames")
        ax.set_ylim(0, 1)
        ax.set_xlim(0.4, max(*sizes, 4) + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(rows) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cdf_scenarios(scenarios: Sequence[Mapping[str, Any]]) -> list[str]:
    """Scenarios to draw CDFs for: all but a sessions sweep (which has its own plot),
    unless that sweep is all there is."""
    others = [sc["name"] for sc in scenarios if sc.get("group") != "sessions"]
    return others or [sc["name"] for sc in scenarios]


def sessions_series(scenarios: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The scenarios to plot against sessions: the ``sessions`` group if there is one,
    else all of them when nothing but the session count (and the name) differs."""
    grouped = [sc for sc in scenarios if sc.get("group") == "sessions"]
    if grouped:
        return grouped
    ignore = {"name", "sessions", "group"}
    shapes = {repr(sorted((k, repr(v)) for k, v in sc.items() if k not in ignore)) for sc in scenarios}
    return list(scenarios) if len(shapes) == 1 else []


def plot_all(doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every plot the document has data for, written into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries, scenarios = doc["results"], doc["scenarios"]
    made = [
        latency_cdf(summaries, out_dir / "latency_cdf.png", cdf_scenarios(scenarios)),
        sessions(summaries, sessions_series(scenarios), out_dir / "sessions.png"),
        batch_sizes(summaries, out_dir / "batch_sizes.png"),
    ]
    return [p for p in made if p is not None]
