"""`python -m orchestrator.analyze` on the real smoke experiment of the session (`smoke_experiment`: a sweep
submitted with ``ray job submit`` to the test cluster), and on copies of it put in the other states a user meets:
running (sweep.json ``running``, fresh ``updated``), interrupted (stale, a record lost). No Ray is needed here.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import PNG, run_module, summary_values

from orchestrator.analysis.cli import analyze, main
from orchestrator.analysis.leaderboard import format_table, leaderboard_row, leaderboard_text, rank_rows, trial_status
from orchestrator.analysis.read import load_experiment
from orchestrator.analysis.report import selection_lines
from orchestrator.analysis.state import STALE_FLOOR_S
from orchestrator.analysis.trials import rank_trials
from orchestrator.io.records import write_record


def copy_experiment(src: Path, dest: Path, status: str | None = None, updated: float | None = None) -> Path:
    """A copy of a real experiment (checkpoints left out), optionally with sweep.json edited and final/ removed."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoint_*", "analysis", "tensorboard"))
    if status is not None:
        sweep = json.loads((dest / "sweep.json").read_text())
        sweep.update(status=status, updated=updated)
        (dest / "sweep.json").write_text(json.dumps(sweep))
        shutil.rmtree(dest / "final", ignore_errors=True)
    return dest


# ------------------------------------------------------------------------------------- no cluster needed


def test_not_an_experiment_folder_exits_2_without_traceback(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path} is not an experiment folder (no sweep.json, "
                                               "experiment_state-*.json or records.parquet)")


def test_experiment_without_records_says_so(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"status": "running", "updated": time.time(), "epochs": 4}))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "state: running" in out and "no epoch records yet" in out
    assert (tmp_path / "analysis" / "leaderboard.csv").is_file()


def test_format_table_aligns_columns():
    text = format_table(["trial", "score"], [["a", "0.5"], ["long-name", "0.25"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1 and lines[1].endswith(" 0.5")


# ------------------------------------------------------------------------------------- one leaderboard, two readers


@pytest.mark.parametrize(("facts", "status"), [
    ({"failed": True, "diverged": True, "epochs": 3}, "error"),  # Tune's verdict outranks the trial's report
    ({"failed": True, "epochs": 3}, "error"),  # even after the last epoch: best_result never picks it
    ({"diverged": True, "epochs": 3}, "diverged"),
    ({"epochs": 3}, "done"),
    ({"epochs": 0}, "not started"),
    ({"epochs": 0, "ended": False, "sweep_state": "running"}, "pending"),
    ({"epochs": 1}, "stopped early"),
    ({"epochs": 1, "ended": False, "sweep_state": "running"}, "running"),
    ({"epochs": 1, "ended": False, "sweep_state": "interrupted"}, "interrupted"),
    ({"epochs": 1, "ended": True, "sweep_state": "interrupted"}, "stopped early"),
])
def test_status_precedence(facts, status):
    args = {"failed": False, "diverged": False, "max_epochs": 3, "ended": True, "sweep_state": "finished", **facts}
    assert trial_status(**args) == status


def test_ranking_puts_failed_then_unscored_trials_last():
    rows = [leaderboard_row(t, {}, final=v, epochs=1, status=s) for t, v, s in [
        ("nan", float("nan"), "done"), ("err", 0.9, "error"), ("low", 0.1, "done"), ("high", 0.5, "stopped early"),
        ("none", None, "not started"), ("tie", 0.5, "done")]]
    assert [r["trial_id"] for r in rank_rows(rows, "max")] == ["high", "tie", "low", "err", "nan", "none"]
    assert [r["trial_id"] for r in rank_rows(rows, "min")] == ["low", "high", "tie", "err", "nan", "none"]
    assert [r["rank"] for r in rank_rows(rows, "max")] == [1, 2, 3, 4, 5, 6]


SYNTHETIC = {  # trial: (Tune's status, reported val_miou per epoch, diverged in the last, error.txt)
    "ok": ("TERMINATED", [0.3, 0.4, 0.5], False, False),
    "asha": ("TERMINATED", [0.2], False, False),
    "retried": ("TERMINATED", [0.1], False, True),  # failed once, Tune retried it, then the scheduler stopped it
    "div": ("TERMINATED", [0.6, float("nan")], True, False),
    "late-error": ("ERROR", [0.7, 0.8, 0.9], False, True),  # every epoch ran, then the trial failed
    "ghost": ("PENDING", [], False, False),  # never reported
}


def synthetic_experiment(path: Path) -> Path:
    """A finished three-epoch sweep, written as the driver and Tune write it, with one trial of each status."""
    path.mkdir()
    (path / "sweep.json").write_text(json.dumps({"status": "finished", "metric": "val_miou", "mode": "max",
                                                 "epochs": 3, "updated": time.time()}))
    trial_data = []
    for trial_id, (status, scores, diverged, error) in SYNTHETIC.items():
        config = {"search.lr": 0.01 * (len(trial_data) + 1)}
        for epoch, score in enumerate(scores, start=1):
            last = diverged and epoch == len(scores)
            write_record(path, trial_id, config, {"epoch": epoch, "val_miou": score, "diverged": last,
                                                  "stop_reason": f"diverged in epoch {epoch}" if last else None})
        (path / f"trial-{trial_id}").mkdir()
        if error:
            (path / f"trial-{trial_id}" / "error.txt").write_text("Traceback ...\nRuntimeError: worker died\n")
        trial_data.append([json.dumps({"trial_id": trial_id, "status": status, "config": config}),
                           json.dumps({"last_result": {"epoch": len(scores)} if scores else {}})])
    (path / "experiment_state-2024-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return path


def fake_grid() -> list[SimpleNamespace]:
    """Tune's ResultGrid for the same trials, as `orchestrator.sweep.chain.leaderboard` reads it."""
    results = []
    for trial_id, (status, scores, diverged, _) in SYNTHETIC.items():
        metrics = {"trial_id": trial_id, "epoch": len(scores), "val_miou": scores[-1], "diverged": diverged,
                   "stop_reason": f"diverged in epoch {len(scores)}" if diverged else None} if scores else None
        error = RuntimeError("worker died") if status == "ERROR" else None
        results.append(SimpleNamespace(metrics=metrics, error=error, config={}, path=f"/x/trial-{trial_id}"))
    return results


EXPECTED = [("ok", "done"), ("asha", "stopped early"), ("retried", "stopped early"), ("late-error", "error"),
            ("div", "diverged"), ("ghost", "not started")]


def test_analysis_ranks_and_labels_trials_by_the_one_precedence(tmp_path):
    rows = rank_trials(load_experiment(synthetic_experiment(tmp_path / "exp")))
    assert [(r["trial_id"], r["status"]) for r in rows] == EXPECTED
    reasons = {r["trial_id"]: r["stop_reason"] for r in rows}
    assert reasons["div"] == "diverged in epoch 2" and reasons["ok"] is None and reasons["retried"] is None
    assert reasons["late-error"] == "RuntimeError: worker died (trial-late-error/error.txt)"


def test_the_sweep_prints_the_same_leaderboard(capsys):
    from orchestrator.config import config_from_dict
    from orchestrator.sweep.chain import leaderboard, print_leaderboard  # imports Ray, starts nothing

    cfg = config_from_dict({"search": {"epochs": 3, "warmup_epochs": 1}})
    rows = leaderboard(fake_grid(), cfg)
    assert [(r["trial_id"], r["status"]) for r in rows] == EXPECTED
    assert {r["trial_id"]: r["stop_reason"] for r in rows}["late-error"] == "worker died"
    print_leaderboard(rows, "val_miou", "max")
    out = capsys.readouterr().out
    assert out == "\n" + leaderboard_text(rows, "val_miou", "max", best=False) + "\n"
    assert "div diverged: diverged in epoch 2" in out and "late-error error: worker died" in out


# ------------------------------------------------------------------------------------- the real experiment



def on_cluster(test):
    """Marks a test that uses the session's smoke experiment (and so the test cluster)."""
    return pytest.mark.slow(pytest.mark.cluster(test))


@pytest.fixture(scope="module")
def experiment(smoke_experiment, tmp_path_factory) -> Path:
    """A copy of the session's finished smoke experiment (so analysis outputs stay out of the shared one)."""
    proc, exp = smoke_experiment
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return copy_experiment(exp, tmp_path_factory.mktemp("analyze") / "finished")


@pytest.fixture(scope="module")
def cli(experiment, tmp_path_factory):
    """One CLI run: the finished experiment compared with a running copy of it."""
    running = copy_experiment(experiment, experiment.parent / "running", status="running", updated=time.time())
    out = tmp_path_factory.mktemp("analysis-out")
    proc = run_module("orchestrator.analyze", str(experiment), "--compare", str(running), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc, out


@on_cluster
def test_results_table_has_one_row_per_trial_epoch(experiment, cli):
    _, out = cli
    table = pd.read_parquet(out / "results.parquet")
    reports = [json.loads(line) for f in experiment.glob("trial-*/result.json") for line in f.read_text().splitlines()]
    epochs = {(r["trial_id"], r["epoch"]) for r in reports if "epoch" in r}  # what Tune received, by its own log
    assert len(table) == len(epochs) and set(zip(table["trial_id"], table["epoch"], strict=True)) == epochs
    assert not table.duplicated(["trial_id", "epoch"]).any()
    assert (table["source"] == "records").all()
    schema = pq.read_schema(out / "results.parquet")
    assert str(schema.field("alpha").type) == "list<element: list<element: double>>"
    assert any(name.startswith("config/") for name in schema.names)
    assert {"val_miou", "genotype", "beta", "trial_status"} <= set(schema.names)


@on_cluster
def test_plots_exist_and_are_valid_pngs(cli):
    import matplotlib.image

    _, out = cli
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    best = rows[0]["trial_id"]
    names = ["curves.png", "hparams.png", "paths.png", f"alpha-{best}.png", f"beta-{best}.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG, name
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100, name


@on_cluster
def test_leaderboard_ranks_by_the_metric(experiment, cli):
    proc, out = cli
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    sweep = json.loads((experiment / "sweep.json").read_text())
    finals = [float(r[f"final_{sweep['metric']}"]) for r in rows]
    assert finals == sorted(finals, reverse=sweep["mode"] == "max")
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == len(list(experiment.glob("trial-*")))
    summary = json.loads((experiment / "final" / "summary.json").read_text())
    assert finals[0] == pytest.approx(summary["search"]["value"])  # the sweep's best trial scores the top score
    printed = [line.split()[1] for line in proc.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert printed[:2] == [r["trial_id"] for r in rows[:2]]
    assert "final retrain of trial" in proc.stdout and "val_miou=" in proc.stdout


@on_cluster
def test_states_finished_running_and_compare(cli):
    proc, out = cli
    first, second = proc.stdout.split("=" * 100)
    assert "state: finished (sweep.json says finished; final/summary.json" in first
    assert "state: running (sweep.json says running; last activity" in second
    assert "final retrain: none yet" in second
    assert "same genotype" in second and (out / "compare.csv").is_file()
    assert (out / "compare-running" / "leaderboard.csv").is_file()


@on_cluster
def test_interrupted_copy_is_detected_and_loses_no_epoch(experiment, tmp_path):
    exp = copy_experiment(experiment, tmp_path / "interrupted", status="running", updated=time.time() - 86400)
    lost = sorted((exp / "records").glob("*/epoch-*.parquet"))[-1]  # the driver died before recording it
    lost.unlink()
    key = (lost.parent.name, int(lost.stem.split("-")[1]))
    later = time.time() + STALE_FLOOR_S + 60
    result = analyze(exp, tmp_path / "out", now=later, hparams_view=False)
    assert result.experiment.state == "interrupted" and "--resume" in result.experiment.state_reason
    frame = result.experiment.frame.set_index(["trial_id", "epoch"])
    assert len(frame) == len(list(experiment.glob("records/*/epoch-*.parquet"))) and frame.index.is_unique
    assert frame.loc[key, "source"] == "tune-result-json"  # Tune's own log of the report
    (exp / f"trial-{key[0]}" / "result.json").unlink()  # ... or, without it, rank 0's epoch file
    assert load_experiment(exp, now=later).frame.set_index(["trial_id", "epoch"]).loc[key, "source"] \
        == "epochs-json"
    assert {r["status"] for r in result.rows} <= {"done", "stopped early", "interrupted"}

    other = next(r["trial_id"] for r in result.rows if r["trial_id"] != key[0])  # killed before its first epoch:
    shutil.rmtree(exp / "records" / other)  # Tune knows it, nothing else does
    shutil.rmtree(exp / f"train-{other}" / "epochs")
    (exp / f"trial-{other}" / "result.json").unlink()
    rows = rank_trials(load_experiment(exp, now=later))
    assert rows[-1]["trial_id"] == other and rows[-1]["epochs"] == 0 and rows[-1]["final"] is None
    assert rows[-1]["status"] == "not started" and rows[-1]["config"]


@on_cluster
def test_hparams_view_lists_each_trial_against_its_final_metrics(experiment, cli):
    _, out = cli
    from tensorboardX.proto import plugin_hparams_pb2

    rows = {r["trial_id"]: r for r in csv.DictReader((out / "leaderboard.csv").open())}
    logdir = experiment / "tensorboard" / "hparams"
    assert sorted(p.name for p in logdir.iterdir()) == sorted(rows)
    for trial_id, row in rows.items():
        values = [v for f in (logdir / trial_id).glob("events.out.tfevents.*") for v in summary_values(f)]
        start = next(v for v in values if v.tag == "_hparams_/session_start_info")
        data = plugin_hparams_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content)
        hparams = data.session_start_info.hparams
        assert hparams["trial"].string_value == trial_id
        assert {k[len("config/"):] for k in row if k.startswith("config/")} <= set(hparams)
        final = next(v.simple_value for v in values if v.tag == "final/val_miou")
        assert final == pytest.approx(float(row["final_val_miou"]), rel=1e-5)
    tune_tags = {v.tag for f in experiment.glob("trial-*/events.out.tfevents.*") for v in summary_values(f)}
    assert "_hparams_/session_start_info" in tune_tags  # Tune's own view: last reported metrics of ended trials


@on_cluster
def test_search_diagnostics_are_recorded_and_reported(cli):
    proc, out = cli
    table = pd.read_parquet(out / "results.parquet")
    diagnostics = {"param_free_ops", "path_depth", "beta_entropy_per_layer", "alpha_entropy", "beta_entropy",
                   "genotype_changed", "path"}
    assert diagnostics <= set(table.columns)
    assert table["param_free_ops"].between(0, 4).all() and table["path_depth"].between(0, 3).all()
    assert all(len(v) == 3 for v in table["beta_entropy_per_layer"])  # smoke: L=3
    assert "search diagnostics at each trial's last epoch" in proc.stdout
    assert "distinct genotypes" in proc.stdout


def test_selection_lines_show_the_short_retrains_and_the_winner():
    assert selection_lines({"selection": {"short_retrains": None}}) == []
    table = {"short_epochs": 5, "metric": "train_loss", "winner": "candidate-1", "candidates": [
        {"label": "candidate-0", "path": [0, 0, 0, 1], "epochs": 5, "val_miou": 0.2, "train_loss": 1.25},
        {"label": "candidate-1", "path": [1, 2, 2, 1], "epochs": 5, "val_miou": 0.25, "train_loss": 1.125}]}
    text = "\n".join(selection_lines({"selection": {"short_retrains": table}}))
    assert "2 candidates short-retrained (5 epochs, ranked by train_loss" in text and "1.125" in text
    assert "candidate-1 (winner)  8 16 16 8" in text and "4 4 4 8" in text
    text = "\n".join(selection_lines({"selection": {"short_retrains": {**table, "seeds": 2}}}))
    assert "(5 epochs, 2 seeds each, their mean shown, ranked by train_loss" in text
