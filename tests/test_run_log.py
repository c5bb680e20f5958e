"""vgg/run_log.py: the metrics file as written, resumed and read back."""

import pytest

from vgg.run_log import MetricsLog, Pace, duration


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resumed_metrics_log_drops_exactly_the_rows_after_the_checkpoint(tmp_path, fmt):
    path = tmp_path / f"metrics.{fmt}"
    log = MetricsLog(path, fmt)
    for step in range(1, 7):  # two epochs of three steps
        log.write({"kind": "train", "epoch": (step - 1) // 3 + 1, "step": step})
        if step % 3 == 0:
            log.write({"kind": "epoch", "epoch": step // 3, "step": step})
    # A checkpoint taken at step 6 before epoch 2's validation: epoch 2's row goes too,
    # though its step is not after the checkpoint's.
    MetricsLog(path, fmt, resume_from=(1, 6))
    kept = [(r["kind"], int(r["epoch"]), int(r["step"])) for r in MetricsLog.read(path)]
    assert kept == [("train", 1, 1), ("train", 1, 2), ("train", 1, 3), ("epoch", 1, 3),
                    ("train", 2, 4), ("train", 2, 5), ("train", 2, 6)]
    MetricsLog(path, fmt, resume_from=(0, 2))
    assert [int(r["step"]) for r in MetricsLog.read(path)] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_torn_last_line_is_dropped_on_resume(tmp_path, fmt):
    # Power loss mid-append leaves half a row without its newline; resuming must work.
    path = tmp_path / f"metrics.{fmt}"
    log = MetricsLog(path, fmt)
    for step in (1, 2):
        log.write({"kind": "train", "epoch": 1, "step": step, "loss": 0.5})
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[-1][:7])
    assert [int(r["step"]) for r in MetricsLog.read(path)] == [1, 2]
    MetricsLog(path, fmt, resume_from=(0, 2))
    assert path.read_text() == whole


def test_pace_gives_epoch_images_per_s_and_the_runs_eta_from_time_per_step():
    # A run resumed at step 100 of 1,000: 10 steps took 30 s of wall time, so the other
    # 890 take 890 x 3 s; the 10 steps trained 640 images in 16 s of training time.
    now = [1000.0]
    pace = Pace(total_steps=1000, first_step=100, clock=lambda: now[0])
    assert pace.eta(100) is None and pace.images_per_s == 0.0  # nothing measured yet
    for _ in range(10):
        pace.add(64, 1.6)
    now[0] += 30.0
    assert pace.eta(110) == pytest.approx(890 * 3.0)
    assert pace.images_per_s == pytest.approx(40.0)
    assert duration(pace.eta(110)) == "0:44:30"
    pace.new_epoch()
    assert pace.images_per_s == 0.0 and pace.eta(110) == pytest.approx(890 * 3.0)
    now[0] += 3.0 * 890
    assert pace.eta(1000) == 0.0
