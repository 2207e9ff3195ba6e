"""The worker toolkit's pieces that need no process group (orchestrator/train/worker.py): progress lines inside
an epoch and their durations."""

from __future__ import annotations

import pytest

from orchestrator.train.worker import Progress, duration, run_tag


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (45.4, "45s"), (60, "1m00s"), (190, "3m10s"),
                                           (3599, "59m59s"), (3720, "1h02m"), (-3, "0s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_prints_at_most_once_per_interval_with_rate_and_eta(capsys):
    clock = Clock()
    progress = Progress(every=10, tag="train-x", epoch=3, epochs=40, steps=1000, images_per_step=4, clock=clock)
    lines = []
    for done in range(1, 1000):
        clock.now += 1.0  # one second per step: 4 img/s
        lines.append(progress.step(done))
    printed = [line for line in lines if line]
    assert len(printed) == 99  # every 10 s, never at the epoch's last step (the epoch's own line follows)
    assert printed[0] == "epoch 3/40 step 10/1000 4.0 img/s eta 10h33m"  # (990 + 37 x 1000) s = 37990 s left
    assert capsys.readouterr().out.splitlines()[0] == f"[train-x] {printed[0]}"


@pytest.mark.parametrize("every, rank", [(0, 0), (10, 1)])
def test_progress_is_silent_when_off_and_off_rank_zero(every, rank, capsys):
    clock = Clock()
    progress = Progress(every=every, tag="t", epoch=1, epochs=1, steps=100, images_per_step=2, rank=rank,
                        clock=clock)
    for done in range(1, 100):
        clock.now += 60
        assert progress.step(done) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("run_dir, tag", [(None, "search"), ("/r/exp/train-ab_00001", "train-ab_00001"),
                                          ("/r/exp/final/retrain/", "retrain")])
def test_run_tag(run_dir, tag):
    assert run_tag(run_dir, "search") == tag
