"""MetricsLogger sinks: jsonl (incl. resume truncation), console, tensorboard, wandb, non-main."""

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from rlvr.metrics import MetricsLogger
from rlvr.metrics import logger as logger_module

KEY_METRICS = {
    "reward/total/mean": 0.5234,
    "reward/accuracy": 0.41,
    "eval/accuracy": 0.375,
    "learner/loss": 0.01234,
    "learner/kl": 0.00123,
    "rollout/len_mean": 312.4,
    "perf/step_s": 4.12,
}


def read_jsonl(path: Path) -> list[dict]:
    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def test_jsonl_records_converted_values_and_flushes_each_call(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, sinks=["jsonl"], total_steps=10)
    logger.log(
        1,
        {
            "reward/total/mean": torch.tensor(0.25),
            "rollout/num_samples": torch.tensor(8),
            "learner/loss": float("nan"),
            "learner/grad_norm": float("inf"),
            "x/int": 3,
        },
    )
    records = read_jsonl(tmp_path / "metrics.jsonl")  # readable before close: flushed
    assert records[0]["step"] == 1 and isinstance(records[0]["time"], float)
    assert {k: v for k, v in records[0].items() if k not in ("step", "time")} == {
        "reward/total/mean": 0.25,
        "rollout/num_samples": 8,
        "learner/loss": None,
        "learner/grad_norm": None,
        "x/int": 3,
    }
    logger.close()
    logger.close()  # twice is fine


def test_jsonl_resume_sets_aside_steps_after_start_and_broken_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MetricsLogger(tmp_path, sinks=["jsonl"], total_steps=10) as logger:
        for step in range(1, 6):
            logger.log(step, {"reward/total/mean": step})
        logger.log(3, {"eval/accuracy": 0.5})
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 6, "reward/to')  # a write cut short by a crash
    original = path.read_text().splitlines()
    side = tmp_path / "metrics.superseded.jsonl"
    side.write_text('{"step": 9, "from": "an earlier resume"}\n')

    with MetricsLogger(tmp_path, sinks=["jsonl"], total_steps=10, start_step=3) as logger:
        # nothing is lost: the lines after the checkpoint's step are appended to the side file, as they were
        assert side.read_text().splitlines() == ['{"step": 9, "from": "an earlier resume"}', *original[3:5], original[6]]
        assert "3 metric line(s) logged after step 3" in capsys.readouterr().err
        assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 3]
        logger.log(4, {"reward/total/mean": 40})
    records = read_jsonl(path)
    assert [(r["step"], r.get("reward/total/mean")) for r in records] == [
        (1, 1),
        (2, 2),
        (3, 3),
        (3, None),
        (4, 40),
    ]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_jsonl_resume_without_ghosts_leaves_file_untouched(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, sinks=["jsonl"], total_steps=10) as logger:
        logger.log(1, {"a": 1.0})
    before = (tmp_path / "metrics.jsonl").stat()
    with MetricsLogger(tmp_path, sinks=["jsonl"], total_steps=10, start_step=1):
        pass
    after = (tmp_path / "metrics.jsonl").stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)


def test_non_tty_console_line_shows_progress_and_key_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = MetricsLogger(tmp_path / "run", sinks=["console"], total_steps=100, start_step=0, is_main=True)
    logger.log(1, KEY_METRICS)
    first = capsys.readouterr().err.strip()
    assert first.startswith("step 1/100 (1%)")
    assert "elapsed" in first and "eta" in first
    for part in (
        "reward=0.523",
        "acc=0.41",
        "eval_acc=0.375",
        "loss=0.0123",
        "kl=0.00123",
        "len=312",
        "step_s=4.12",
    ):
        assert part in first

    logger.log(2, {"reward/total/mean": 0.6})
    assert capsys.readouterr().err == ""  # neither 10 s nor 1% of the run since the last line

    logger.log(100, {"reward/total/mean": 0.9})
    last = capsys.readouterr().err.strip()
    assert last.startswith("step 100/100 (100%)")
    # eval accuracy is sticky; the other numbers of earlier steps are not shown as current
    assert "reward=0.9" in last and "eval_acc=0.375" in last and "loss=" not in last
    logger.write("a message")
    assert capsys.readouterr().err == "a message\n"
    logger.close()
    assert not (tmp_path / "run").exists()  # the console alone needs no run folder


def test_non_tty_console_lines_follow_step_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logger_module, "LINE_EVERY_S", 0.0)
    with MetricsLogger(tmp_path, sinks=["console"], total_steps=500, start_step=100) as logger:
        for step in range(101, 121):
            logger.log(step, {"learner/loss": 1.0})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [
        "101/500",
        "106/500",
        "111/500",
        "116/500",
    ]  # every 5 steps


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tty_console_draws_a_bar_with_postfix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with MetricsLogger(tmp_path, sinks=["console"], total_steps=10, start_step=2) as logger:
        logger.log(3, KEY_METRICS)
        logger.write("between steps")
    out = terminal.getvalue()
    assert "3/10" in out and "reward=0.523" in out and "step_s=4.12" in out
    assert "between steps\n" in out


@pytest.mark.parametrize("counter", [None, 9])
def test_tensorboard_scalars_read_back_and_resume_purges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counter: int | None
) -> None:
    """counter=9: the resumed run's event file is made in the same second as the first one with
    file counter 10, which sorts before 9 (CI failed on this once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer import event_file_writer

    if counter is not None:
        monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(counter))
    with MetricsLogger(tmp_path, sinks=["tensorboard"], total_steps=10) as logger:
        for step in range(1, 5):
            logger.log(step, {"reward/total/mean": torch.tensor(float(step))})
    with MetricsLogger(tmp_path, sinks=["tensorboard"], total_steps=10, start_step=2) as logger:
        logger.log(3, {"reward/total/mean": 30.0})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/total/mean")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_wandb_offline_run_creates_its_folder_and_resumes_same_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": tmp_path / "cfg",
        "WANDB_CACHE_DIR": tmp_path / "cache",
        "WANDB_DATA_DIR": tmp_path / "data",
    }.items():
        monkeypatch.setenv(name, str(value))
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, sinks=["wandb"], total_steps=4, config={"lr": 1e-6}, run_name="t") as logger:
        logger.log(1, {"reward/total/mean": 0.5})
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0

    with MetricsLogger(run_dir, sinks=["wandb"], total_steps=4, start_step=1) as logger:
        logger.log(2, {"reward/total/mean": 0.6})
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id
    assert all(
        run_id in p.name for p in (run_dir / "wandb").glob("offline-run-*")
    )  # same-second: "-1" suffix


def test_wandb_missing_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ImportError, match=r"pip install rlvr\[wandb\]"):
        MetricsLogger(tmp_path, sinks=["wandb"], total_steps=1)


def test_non_main_process_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    with MetricsLogger(
        run_dir, sinks=["console", "jsonl", "tensorboard", "wandb"], total_steps=3, is_main=False
    ) as logger:
        logger.log(1, KEY_METRICS)
        logger.write("hidden")
    assert not run_dir.exists()
    assert capsys.readouterr() == ("", "")


def test_unknown_sink_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tensorbord"):
        MetricsLogger(tmp_path, sinks=["tensorbord"], total_steps=1)
