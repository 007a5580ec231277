"""Training curves of a run as one PNG, read from its metrics.jsonl.

    python -m rlvr.metrics.plot runs/my_run            # writes runs/my_run/curves.png
    python -m rlvr.metrics.plot runs/my_run --out a.png

Panel (a): training reward mean and accuracy (a light raw line plus a moving average) and held-out
eval accuracy (markers). Panel (b): mean response length and, on a second axis, the fraction of
groups whose rewards had zero spread (they carry no GRPO-style learning signal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = tuple[np.ndarray, np.ndarray]  # steps, values


def read_series(path: Path) -> dict[str, Series]:
    """Every metric of a metrics.jsonl file as (steps, values), skipping nulls and broken lines."""
    points: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict) or "step" not in record:
            continue
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                points.setdefault(key, []).append((record["step"], float(value)))
    return {
        key: (np.array([s for s, _ in pts]), np.array([v for _, v in pts])) for key, pts in points.items()
    }


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points; shorter at the start so the curve has no gap.

    moving_average([1, 2, 3, 4], 2) → [1, 1.5, 2.5, 3.5]
    """
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    return (cumsum[end] - cumsum[start]) / (end - start)


def _smoothing_window(n: int) -> int:
    """About a tenth of the run, capped so long runs keep their shape."""
    return int(np.clip(n // 10, 1, 50))


def _plot_raw_and_smoothed(ax: Axes, series: Series, label: str, color: str) -> None:
    steps, values = series
    # A single point draws no line, so it gets a marker instead.
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=1, marker="o" if len(steps) == 1 else None)
    ax.plot(
        steps, moving_average(values, _smoothing_window(len(values))), color=color, linewidth=2, label=label
    )


def _reward_panel(ax: Axes, series: dict[str, Series]) -> None:
    for key, label, color in (
        ("reward/total/mean", "train reward (mean)", "tab:blue"),
        ("reward/accuracy", "train accuracy", "tab:orange"),
    ):
        if key in series:
            _plot_raw_and_smoothed(ax, series[key], label, color)
    if "eval/accuracy" in series:
        ax.plot(
            *series["eval/accuracy"], color="tab:green", marker="o", linestyle="--", label="eval accuracy"
        )
    ax.set_ylabel("reward / accuracy")
    _finish_panel(ax, "(a) reward and accuracy")


def _length_panel(ax: Axes, series: dict[str, Series]) -> None:
    if "rollout/len_mean" in series:
        _plot_raw_and_smoothed(ax, series["rollout/len_mean"], "response length (mean)", "tab:purple")
    ax.set_ylabel("tokens")
    ax.set_xlabel("step")
    if "advantage/zero_std_frac" in series:
        # A fraction in [0, 1] next to lengths in the hundreds needs its own axis.
        twin = ax.twinx()
        _plot_raw_and_smoothed(twin, series["advantage/zero_std_frac"], "zero-std groups (frac)", "tab:red")
        twin.set_ylabel("fraction of groups")
        twin.legend(loc="upper right", fontsize="small")
    _finish_panel(ax, "(b) response length")


def _finish_panel(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize="medium", loc="left")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves from run_dir/metrics.jsonl into a PNG (default run_dir/curves.png).

    Uses the Agg canvas directly, never pyplot, so it works headless and leaves the caller's
    matplotlib backend alone.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "curves.png"
    series = read_series(run_dir / "metrics.jsonl")
    fig = Figure(figsize=(9, 7), constrained_layout=True)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    _reward_panel(top, series)
    _length_panel(bottom, series)
    fig.suptitle(run_dir.resolve().name)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line `python -m rlvr.metrics.plot RUN_DIR [--out PNG]`: plot the run and print the PNG's path."""
    parser = argparse.ArgumentParser(prog="python -m rlvr.metrics.plot", description=plot_run.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder holding metrics.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))


if __name__ == "__main__":
    main()
