"""Does the search beat chance, at equal compute, on data it never chose on? Five arms, paired by search seed.

For each search seed s (the config's ``runtime.seed`` set to s):

- ``pipeline``: the shipped chain (sweep, decode, the selection step) up to its choice, without its own final
  retrain: the architecture a user of the config gets.
- ``decoded``: the same search's decoded genotype (the paper's method alone, no short-retrain filter).
- ``frozen``: the ablation of the architecture updates: alpha and beta as a search initialises them, never
  updated, decoded the same way (the config's cell cap and beta decoding; Viterbi for ``selection.path:
  supernet``). What the decoding gives before anything is learned: a random cell on Viterbi's prior path.
  ``decoded`` - ``frozen`` is what the search's alpha/beta updates add. It costs only its evaluation retrains.
- ``random-search``: K genotypes drawn uniformly from the space through the same filter (the selection
  section's short retrains at the same seeds, the same metric on the selection split). K makes its compute equal
  to the pipeline's: the pipeline's short retrains plus as many more as its search's time buys at their measured
  cost, ``K = top_k + round(search seconds / (selection seconds / top_k))`` (at least top_k; search seconds
  include the sweep's ranking of its trials, ``tune.rank_by: architecture``).
- ``single`` (not in the default arms; for a config whose ``tune.param_space`` sweeps): one search at the
  config's own values of the swept keys (``tune.param_space: {}``), whose selection step gets the rest of the
  sweep's compute as more sampled candidates, ``K = top_k + round((pipeline search seconds - single search
  seconds) / (selection seconds / top_k))``. ``pipeline`` - ``single``: does the sweep pay against spending
  its compute on the filter of one search?
- ``random``: ``draws`` single uniform draws, unfiltered (the paper-style baseline); the arm's score at a seed is
  the mean of its draws'.

Then every arm's architecture is retrained at the evaluation seeds (disjoint from every seed the searches and filters
used) with the config's full retrain budget (or the ``retrain.*`` overrides of `evaluation_config`), and scored on the
report split (``test_miou``), which no search, sweep or selection read. `orchestrator.analysis.paired` turns the
scores into per-arm means, paired differences with bootstrap intervals over search seeds, and the yardstick's
seed-to-seed agreement.

Everything lives under ``out``: ``searches/`` (the pipeline's and the single trial's experiments),
``random-search/seed<s>/`` (its short retrains), ``runs`` (the evaluation retrains, shareable across studies)
and ``arms.json``. Every stage is named by seed, so running the same command again reuses what finished. Tune
driver side: no model code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orchestrator.analysis.paired import mean_or_nan
from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict, with_overrides
from orchestrator.io import storage
from orchestrator.io.atomic import write_json
from orchestrator.io.paths import absolute
from orchestrator.sweep.retrain_trials import retrain_inputs, run_trials
from search_space import Genotype
from search_space.sampling import sample_genotypes

ARMS = ("pipeline", "decoded", "frozen", "random-search", "random", "single")
DEFAULT_ARMS = ARMS[:5]
ARMS_FILE = "arms.json"
RANDOM_SEARCH_STREAM, RANDOM_STREAM, FROZEN_STREAM = 1_000_000, 2_000_000, 3_000_000
"""Sample seeds of the random arms and of ``frozen``'s initialisation at search seed s: stream + s (no arm
draws what another draws)."""


class ArmsError(ValueError):
    """A study that cannot run as asked (overlapping seeds, a bad count); the message says what to change."""


@dataclass(frozen=True)
class Plan:
    """What the study runs: the search seeds, the evaluation seeds, the random draws per seed, the arms."""

    search_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    draws: int = 2
    arms: tuple[str, ...] = DEFAULT_ARMS


def used_seeds(cfg: ExperimentConfig, search_seed: int) -> set[int]:
    """Every training seed a search at ``search_seed`` uses to choose: the search's own and the short retrains'."""
    return {search_seed + j for j in range(max(cfg.selection.seeds, 1))}


def check_plan(cfg: ExperimentConfig, plan: Plan) -> None:
    """Evaluation seeds must be disjoint from every seed used to choose (a lucky initialisation that won a short
    retrain must not score the winner); arms must be known; counts positive."""
    unknown = [a for a in plan.arms if a not in ARMS]
    if unknown:
        raise ArmsError(f"--arms {','.join(unknown)}: expected some of {', '.join(ARMS)}")
    if not plan.search_seeds or not plan.eval_seeds or plan.draws < 1:
        raise ArmsError("expected at least one search seed, one evaluation seed and one random draw per seed")
    if "single" in plan.arms and sweep_points(cfg) < 2:
        raise ArmsError("--arms single: the config's sweep has one trial (tune.param_space "
                        f"{cfg.tune.param_space or '{}'}, tune.num_samples {cfg.tune.num_samples}), so the single "
                        "arm would repeat the pipeline; it needs a config whose tune.param_space sweeps, e.g. "
                        "experiments/configs/learning.yaml")
    choosing = set().union(*(used_seeds(cfg, s) for s in plan.search_seeds))
    shared = sorted(choosing & set(plan.eval_seeds))
    if shared:
        raise ArmsError(f"evaluation seeds {shared} are also used to choose (search seeds {list(plan.search_seeds)}"
                        f" with selection.seeds={cfg.selection.seeds}): pick evaluation seeds outside "
                        f"{sorted(choosing)}, e.g. 100 and up")


def sweep_points(cfg: ExperimentConfig) -> int:
    """How many trials the config's sweep starts: grid values crossed, times ``tune.num_samples``; a key drawn
    from a distribution counts as many points."""
    points = cfg.tune.num_samples
    for spec in cfg.tune.param_space.values():
        kind, values = next(iter(spec.items()))
        points *= len(values) if kind == "grid" else 2
    return points


def seed_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    return with_overrides(cfg, {"runtime.seed": seed}, f"search seed {seed}")


def run_pipeline(cfg: ExperimentConfig, seed: int, out: str) -> dict[str, Any]:
    """The shipped chain at ``seed`` up to its choice (``final/choice.json``, reused when it exists)."""
    from orchestrator.sweep.chain import run_experiment
    from orchestrator.sweep.selection import CHOICE_FILE

    name = f"pipeline-seed{seed}"
    exp_dir = storage.join(out, "searches", name)
    choice_path = storage.join(exp_dir, "final", CHOICE_FILE)
    if storage.is_file(choice_path):
        print(f"arms: seed {seed}: the pipeline's choice is there already ({choice_path})", flush=True)
        return storage.read_json(choice_path)
    print(f"arms: seed {seed}: the pipeline (sweep, decode, selection)", flush=True)
    resume = storage.is_dir(exp_dir)
    result = run_experiment(seed_config(cfg, seed), storage.join(out, "searches"), name, resume=resume,
                            final_retrain=False)
    return result["choice"]


def search_seconds(choice: dict[str, Any]) -> float:
    """What a chain spent before its selection step: the sweep and the ranking of its trials."""
    return float(choice.get("search_seconds") or 0.0) + float(choice.get("ranking_seconds") or 0.0)


def run_single(cfg: ExperimentConfig, seed: int, pipeline: dict[str, Any], out: str) -> dict[str, Any]:
    """The ``single`` arm at ``seed``: one search at the config's own values (``tune.param_space: {}``), then its
    selection step with `single_trial_size` candidates; ``final/choice.json`` (reused when it exists). The
    search's facts are kept in ``final/single_search.json`` so that a rerun sizes the filter by the time the
    search took, not by the seconds its restore takes."""
    import ray

    from orchestrator.sweep.chain import run_experiment
    from orchestrator.sweep.final import FinalActor
    from orchestrator.sweep.selection import CHOICE_FILE, choose_architecture

    name = f"single-seed{seed}"
    exp_dir = storage.join(out, "searches", name)
    choice_path, facts_path = (storage.join(exp_dir, "final", f) for f in (CHOICE_FILE, "single_search.json"))
    if storage.is_file(choice_path):
        print(f"arms: seed {seed}: the single trial's choice is there already ({choice_path})", flush=True)
        return storage.read_json(choice_path)
    single = with_overrides(seed_config(cfg, seed), {"tune.param_space": {}, "tune.num_samples": 1},
                          "the single arm (one trial)")
    if storage.is_file(facts_path):
        facts = storage.read_json(facts_path)
    else:
        print(f"arms: seed {seed}: the single trial (one search at the config's values)", flush=True)
        facts = run_experiment(single, storage.join(out, "searches"), name, resume=storage.is_dir(exp_dir),
                               retrain=False)["search"]
        write_json(facts_path, facts)
    k = single_trial_size(cfg, pipeline, search_seconds(facts))
    chosen = with_overrides(single, {**facts["config"], "selection.top_k": k}, "the single arm's filter")
    actor = FinalActor.remote()
    try:
        return choose_architecture(actor, chosen, exp_dir, facts)
    finally:
        ray.kill(actor)


def random_search_size(cfg: ExperimentConfig, choice: dict[str, Any]) -> int:
    """K of the random-search arm: the pipeline's candidates plus as many more as its search time buys at the
    measured cost of one of its short retrains (see the module docstring)."""
    top_k = max(int(choice.get("candidates") or cfg.selection.top_k), 1)
    if top_k < 2 or not choice.get("selection_seconds"):
        return max(top_k, 1) + 1  # no filter measured (top_k 1): one draw more than the pipeline retrains
    per_candidate = float(choice["selection_seconds"]) / top_k
    return top_k + max(0, round(search_seconds(choice) / per_candidate))


def single_trial_size(cfg: ExperimentConfig, choice: dict[str, Any], single_seconds: float) -> int:
    """K of the single arm's filter: the pipeline's candidates plus as many more as the sweep's extra time (the
    pipeline's search seconds less the single search's) buys at the cost of one of the pipeline's short retrains;
    the pipeline's candidate count when it measured no filter (top_k 1)."""
    top_k = max(int(choice.get("candidates") or cfg.selection.top_k), 1)
    if top_k < 2 or not choice.get("selection_seconds"):
        return top_k
    per_candidate = float(choice["selection_seconds"]) / top_k
    return top_k + max(0, round((search_seconds(choice) - single_seconds) / per_candidate))


def run_random_search(cfg: ExperimentConfig, seed: int, k: int, out: str) -> dict[str, Any]:
    """K uniform genotypes through the selection step's filter at ``seed``; the winner and the table."""
    from orchestrator.sweep.selection import short_retrain_selection

    space = cfg.search_space
    genotypes = sample_genotypes(space.layers, space.blocks, k, seed=RANDOM_SEARCH_STREAM + seed)
    start = time.time()
    winner, table = short_retrain_selection(seed_config(cfg, seed), [g.to_dict() for g in genotypes],
                                            storage.join(out, "random-search", f"seed{seed}", "selection"))
    return {"selected": winner, "candidates": k, "seconds": round(time.time() - start, 1), "table": table}


def random_draws(cfg: ExperimentConfig, seed: int, draws: int) -> list[dict[str, Any]]:
    space = cfg.search_space
    return [g.to_dict() for g in sample_genotypes(space.layers, space.blocks, draws, seed=RANDOM_STREAM + seed)]


def frozen_genotype(cfg: ExperimentConfig, seed: int) -> dict[str, Any]:
    """The ``frozen`` arm at ``seed``: the search's initial alpha and beta (`initial_arch_parameters`, drawn
    from stream FROZEN_STREAM + seed), decoded as the pipeline decodes."""
    import torch

    from orchestrator.sweep.final import BETA_DECODINGS, decoded_cell
    from search_space.supernet import initial_arch_parameters

    space, s = cfg.search_space, cfg.selection
    generator = torch.Generator().manual_seed(FROZEN_STREAM + seed)
    alpha, beta = initial_arch_parameters(space.layers, space.blocks, generator)
    path = BETA_DECODINGS.get(s.path, BETA_DECODINGS["viterbi"])(beta)
    return Genotype(cell=decoded_cell(alpha, s.max_param_free), path=path).to_dict()


def choose_searched(cfg: ExperimentConfig, plan: Plan, seed: int, out: str) -> dict[str, Any]:
    """The arms that need the pipeline's search at ``seed``: their architectures and stage timings."""
    start = time.time()
    choice = run_pipeline(cfg, seed, out)
    row: dict[str, Any] = {"arms": {"pipeline": [choice["selected"]], "decoded": [choice["decoded"]]}}
    row["pipeline"] = {k: choice.get(k) for k in ("search_seconds", "ranking_seconds", "selection_seconds",
                                                  "candidates", "best_trial", "checkpoint")}
    row["pipeline"]["wall_seconds"] = round(time.time() - start, 1)
    if "random-search" in plan.arms:
        k = random_search_size(cfg, choice)
        searched = run_random_search(cfg, seed, k, out)
        row["random-search"] = {"candidates": k, "seconds": searched["seconds"]}
        row["arms"]["random-search"] = [searched["selected"]]
    if "single" in plan.arms:
        single = run_single(cfg, seed, choice, out)
        row["single"] = {k: single.get(k) for k in ("search_seconds", "selection_seconds", "candidates")}
        row["arms"]["single"] = [single["selected"]]
    return row


def choose_all(cfg: ExperimentConfig, plan: Plan, out: str) -> dict[int, dict[str, Any]]:
    """Per search seed: each arm's architectures (a list: one, or the random draws) and the stage timings."""
    chosen: dict[int, dict[str, Any]] = {}
    for seed in plan.search_seeds:
        searched = {"pipeline", "decoded", "random-search", "single"} & set(plan.arms)
        row: dict[str, Any] = choose_searched(cfg, plan, seed, out) if searched else {"arms": {}}
        if "frozen" in plan.arms:
            row["arms"]["frozen"] = [frozen_genotype(cfg, seed)]
        if "random" in plan.arms:
            row["arms"]["random"] = random_draws(cfg, seed, plan.draws)
        row["arms"] = {arm: genotypes for arm, genotypes in row["arms"].items() if arm in plan.arms}
        chosen[seed] = row
    return chosen


def evaluate_all(cfg: ExperimentConfig, chosen: dict[int, dict[str, Any]], eval_seeds: tuple[int, ...],
                 runs: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Full retrains of every distinct chosen genotype at every evaluation seed (test split reported); returns
    the metrics per (genotype key, evaluation seed)."""
    distinct: dict[str, dict[str, Any]] = {}
    for row in chosen.values():
        for genotypes in row["arms"].values():
            for g in genotypes:
                distinct.setdefault(genotype_label(g), g)
    trials = [{"label": label, "genotype": g, "seed": s} for label, g in distinct.items() for s in eval_seeds]
    print(f"arms: {len(distinct)} distinct architectures x {len(eval_seeds)} evaluation seeds = {len(trials)} "
          "full retrains", flush=True)
    return run_trials(cfg, trials, runs, in_process=cfg.selection.in_process, report=True)


def genotype_label(genotype: dict[str, Any]) -> str:
    from orchestrator.sweep.retrain_trials import genotype_key

    return f"g-{genotype_key(Genotype.from_dict(genotype))}"


def previous_scores(out: str) -> dict[int, tuple[str | None, dict[str, float]]]:
    """Per search seed, the supernet scores a finished study in ``out`` computed (its checkpoint, label -> score):
    a score depends only on the checkpoint and the genotype, so a rerun (another arm, another yardstick) reuses
    them. Older arms.json files hold the scores in the order of their distinct architectures."""
    path = storage.join(out, ARMS_FILE)
    if not storage.is_file(path):
        return {}
    previous = storage.read_json(path)
    labels = list(dict.fromkeys(r["label"] for r in previous.get("architectures", [])))
    found = {}
    for row in previous.get("supernet_ranking", []):
        scores = row.get("scores")
        if scores is None and len(row.get("supernet_miou", [])) == len(labels):
            scores = dict(zip(labels, row["supernet_miou"], strict=True))
        if scores is not None:
            found[int(row["search_seed"])] = (row.get("checkpoint"), scores)
    return found


def supernet_ranking(cfg: ExperimentConfig, chosen: dict[int, dict[str, Any]], rows: list[dict[str, Any]],
                     out: str) -> list[dict[str, Any]]:
    """Per search seed: its trained supernet's score of every evaluated architecture (alpha and beta fixed to
    it; scores of a previous run with the same checkpoint reused, `previous_scores`) and Kendall's tau against
    their mean test mIoU: does the supernet rank architectures at all?"""
    import ray

    from orchestrator.sweep.validation import kendall_tau, score_remote

    distinct = {r["label"]: r["genotype"] for r in rows}
    truth = [mean_or_nan(r["test_miou"]) for r in {r["label"]: r for r in rows}.values()]
    threads = max(1, int(cfg.retrain.num_workers * cfg.scaling.cpus_per_worker))
    known = previous_scores(out)
    out_rows = []
    for seed, row in chosen.items():
        checkpoint = (row.get("pipeline") or {}).get("checkpoint")
        if not checkpoint or not storage.is_dir(checkpoint):
            continue
        reused_checkpoint, reused = known.get(int(seed), (None, {}))
        scores = dict(reused) if reused_checkpoint == checkpoint else {}
        missing = [label for label in distinct if label not in scores]
        if missing:
            task = score_remote.options(num_cpus=threads)
            new = ray.get(task.remote(checkpoint, config_to_dict(seed_config(cfg, int(seed))),
                                      [distinct[label] for label in missing], threads))
            scores.update(zip(missing, new, strict=True))
        ordered = [scores[label] for label in distinct]
        out_rows.append({"search_seed": int(seed), "checkpoint": checkpoint, "supernet_miou": ordered,
                         "scores": {label: scores[label] for label in distinct}, "reused": len(distinct) - len(missing),
                         "kendall_tau": kendall_tau(ordered, truth)})
    return out_rows


def evaluation_config(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """The config of the evaluation retrains (the yardstick): ``cfg`` with ``retrain.*`` overrides. Choosing (the
    searches, the short retrains of both filters) keeps ``cfg``, so a better yardstick does not change a choice."""
    outside = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("retrain.")]
    if outside:
        raise ArmsError(f"--eval-override {' '.join(outside)}: expected retrain.<key>=<value>; the evaluation "
                        "retrains may differ from the config in the retrain section only")
    return with_overrides(cfg, list(overrides), "--eval-override") if overrides else cfg


def nested_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """``key.sub (x against y)`` for every leaf where two nested dicts differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += nested_differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key} ({x!r} against {y!r})")
    return out


def check_scored_alike(study: dict[str, Any], source: str, inputs: dict[str, Any], eval_seeds: list[int],
                       what: str) -> None:
    """A finished study (its ``arms.json``, read from ``source``) must have scored its architectures as another
    does: the same evaluation seeds and evaluation retrain (`retrain_inputs`: the retrain and data sections, with
    its --eval-override), else its scores are not comparable; ``what`` names the argument in the message."""
    if study.get("eval_seeds") != list(eval_seeds):
        raise ArmsError(f"{what} {source}: eval_seeds {study.get('eval_seeds')}, expected {list(eval_seeds)}")
    evaluated = dict(study["config"], retrain=study.get("evaluation_retrain", study["config"]["retrain"]))
    differ = nested_differences(retrain_inputs(config_from_dict(evaluated, source)), inputs)
    if differ:
        raise ArmsError(f"{what} {source}: its evaluation retrains differ: {'; '.join(differ)}; expected the same "
                        "retrain and data so the scores are comparable")


def run_arms(cfg: ExperimentConfig, plan: Plan, out: str, runs: str | None = None,
             ranking: bool = True, evaluation: ExperimentConfig | None = None) -> dict[str, Any]:
    """The whole study (module docstring); writes ``<out>/arms.json``, ``arms.png`` and ``yardstick.png`` and
    returns the result. ``evaluation``: the evaluation retrains' config (`evaluation_config`), default ``cfg``."""
    from orchestrator.analysis.arms_report import arms_figure, summarize_arms, yardstick_figure
    from orchestrator.io.atomic import save_figure

    check_plan(cfg, plan)
    out = absolute(out)
    start = time.time()
    chosen = choose_all(cfg, plan, out)
    evaluation = evaluation or cfg
    metrics = evaluate_all(evaluation, chosen, plan.eval_seeds, runs or storage.join(out, "runs"))
    result = summarize_arms(chosen, metrics, list(plan.eval_seeds), genotype_label)
    result["supernet_ranking"] = supernet_ranking(cfg, chosen, result["architectures"], out) if ranking else []
    result["config"] = config_to_dict(cfg)
    result["evaluation_retrain"] = config_to_dict(evaluation)["retrain"]
    result["seconds"] = round(time.time() - start, 1)
    write_json(storage.join(out, ARMS_FILE), result)
    save_figure(arms_figure(result), storage.join(out, "arms.png"))
    save_figure(yardstick_figure(result), storage.join(out, "yardstick.png"))
    return result
