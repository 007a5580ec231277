"""plot_run draws a PNG from metrics.jsonl, including sparse and one-line files."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from rlvr.metrics.plot import main, moving_average, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100


def test_plot_synthetic_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "grpo_tiny"
    records = []
    for step in range(1, 51):
        records.append(
            {
                "step": step,
                "time": 0.0,
                "reward/total/mean": 0.2 + 0.01 * step + 0.05 * math.sin(step),
                "reward/accuracy": 0.1 + 0.012 * step,
                "rollout/len_mean": 300 - 2 * step,
                "advantage/zero_std_frac": 0.5 - 0.005 * step,
                "learner/loss": None,
            }
        )
        if step % 10 == 0:
            records.append({"step": step, "time": 0.0, "eval/accuracy": 0.01 * step})
    write_metrics(run_dir, records)
    out = plot_run(run_dir)
    assert out == run_dir / "curves.png"
    assert_png(out)


def test_plot_single_line_and_missing_keys(tmp_path: Path) -> None:
    write_metrics(tmp_path / "one", [{"step": 1, "time": 0.0, "reward/total/mean": 0.5}])
    assert_png(plot_run(tmp_path / "one", tmp_path / "figs" / "one.png"))
    write_metrics(tmp_path / "other", [{"step": 1, "time": 0.0, "perf/step_s": 2.0}])
    with (tmp_path / "other" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "reward/acc')  # a line cut short by a crash
    assert_png(plot_run(tmp_path / "other"))


def test_cli_writes_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_metrics(tmp_path, [{"step": s, "reward/accuracy": s / 10} for s in range(1, 4)])
    main([str(tmp_path), "--out", str(tmp_path / "c.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "c.png")
    assert_png(tmp_path / "c.png")


def test_moving_average_is_trailing_and_gapless() -> None:
    assert moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert moving_average(np.array([7.0]), 5).tolist() == [7.0]
