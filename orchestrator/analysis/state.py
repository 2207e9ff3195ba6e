"""An experiment's state: ``finished``, ``running`` or ``interrupted``, and a sentence saying how that was decided.

``finished`` when sweep.json says so (or, without sweep.json, when Tune has every trial TERMINATED or ERROR);
otherwise ``running`` if the newest activity timestamp recorded *inside* the files (sweep.json ``updated``, the
newest record's ``time_recorded``, Tune's start and last-result times) is younger than ``max(10 min, 3 x the
longest epoch_seconds)``, else ``interrupted``. File modification times are not used: copies and syncs change
them.
"""

from __future__ import annotations

from orchestrator.analysis.experiment import TERMINAL, Experiment
from orchestrator.io.numbers import is_finite

STALE_FLOOR_S = 600.0
"""An experiment whose newest activity is older than this (or 3 epochs, if longer) is called interrupted: Tune
reports once per epoch, and start-up plus the first epoch of a small search fit in 10 minutes."""
STALE_EPOCHS = 3.0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} days"


def last_activity(exp: Experiment) -> tuple[float | None, str]:
    """The newest activity timestamp written inside the experiment's files, and which file it came from."""
    found = []
    if is_finite(exp.sweep.get("updated")):
        found.append((float(exp.sweep["updated"]), "sweep.json 'updated'"))
    recorded = exp.frame[exp.frame["source"] != "epochs-json"] if "source" in exp.frame else exp.frame
    if "time_recorded" in recorded and recorded["time_recorded"].notna().any():
        found.append((float(recorded["time_recorded"].max()), "the newest record"))
    if is_finite(exp.tune_start):
        found.append((float(exp.tune_start), "Tune's start time"))
    times = [t.last_result_time for t in exp.tune_trials.values() if is_finite(t.last_result_time)]
    if times:
        found.append((max(times), "Tune's last result"))
    return max(found) if found else (None, "")


def stale_limit(exp: Experiment) -> float:
    """Seconds without activity after which a running sweep is taken for interrupted."""
    longest = exp.frame["epoch_seconds"].max() if "epoch_seconds" in exp.frame else float("nan")
    return max(STALE_FLOOR_S, STALE_EPOCHS * float(longest)) if is_finite(longest) else STALE_FLOOR_S


def detect_state(exp: Experiment, now: float) -> tuple[str, str]:
    """``finished``, ``running`` or ``interrupted``, and a sentence saying how that was decided."""
    status = exp.sweep.get("status")
    if status == "finished":
        return "finished", "sweep.json says finished" + _retrain_note(exp)
    if not exp.sweep and exp.tune_trials and all(t.status in TERMINAL for t in exp.tune_trials.values()):
        return "finished", "no sweep.json; Tune's state has every trial TERMINATED or ERROR" + _retrain_note(exp)
    last, source = last_activity(exp)
    limit = stale_limit(exp)
    said = f"sweep.json says {status}" if status else "no sweep.json and Tune's state has unfinished trials"
    if last is None:
        return "interrupted", f"{said}, and no activity timestamp was found"
    age = max(0.0, now - last)
    rule = f"limit max(10 min, 3 x longest epoch) = {_age(limit)}"
    if age <= limit:
        return "running", f"{said}; last activity ({source}) {_age(age)} ago, within the {rule}"
    return "interrupted", (f"{said}; last activity ({source}) {_age(age)} ago, older than the {rule}; "
                           "continue it with the same command and --resume")


def _retrain_note(exp: Experiment) -> str:
    if exp.summary is None:
        return "; no final/summary.json (the final retrain was skipped, is still running or failed)"
    return "; final/summary.json holds the final retrain"

