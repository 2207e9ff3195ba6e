"""Scoring one architecture with the supernet's shared weights (`SuperNet.forward(x, genotype)`), the decoder
search head, the k-best paths under beta, and path selection from a search checkpoint (orchestrator/train/
supernet_score.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import constant_predictor_miou

from orchestrator.config import config_from_dict, config_to_dict, search_space_of
from orchestrator.io.checkpointing import write_checkpoint_dir
from search_space import Genotype, SuperNet, decode_path, transition_probs
from search_space.decoding import top_paths
from search_space.sampling import legal_paths, sample_cell
from search_space.supernet import HEADS, genotype_weights

CELL = ((("sep_conv_3x3", 0), ("skip_connect", 1)), (("max_pool_3x3", 1), ("dil_conv_3x3", 2)))


def tiny(head: str = "aspp", layers: int = 3) -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(4, layers=layers, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16), head=head).eval()


def log_prob(beta: torch.Tensor, path: tuple[int, ...]) -> float:
    probs, prev, total = transition_probs(beta.double()), 0, 0.0
    for layer, level in enumerate(path):
        total += math.log(float(probs[layer, prev, level - prev + 1]))
        prev = level
    return total


@pytest.mark.parametrize("head", HEADS)
def test_heads_predict_at_the_input_size_and_match_the_reference(head):
    net = tiny(head)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 4, 32, 32)
        torch.testing.assert_close(y, net.forward_reference(x), rtol=1e-4, atol=1e-5)


def test_genotype_weights_keep_one_op_per_kept_edge():
    weights = genotype_weights(Genotype(cell=CELL, path=(0, 1, 1)), 5)
    assert weights.sum().item() == 4 and weights.sum(1).tolist() == [1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="blocks"):
        genotype_weights(Genotype(cell=CELL, path=(0, 1, 1)), 9)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("path", [(0, 0, 0), (0, 1, 2), (1, 1, 0)])
def test_a_fixed_genotype_ignores_alpha_and_the_heads_off_its_path(head, path):
    net, x = tiny(head), torch.randn(2, 3, 32, 32)
    genotype = Genotype(cell=CELL, path=path)
    with torch.no_grad():
        before = net(x, genotype=genotype)
        net.alpha.normal_()
        for level, module in net.heads.items():
            if int(level) != path[-1]:
                for p in module.parameters():
                    p.normal_()
        torch.testing.assert_close(net(x, genotype=genotype), before)
        assert not torch.allclose(net(x), net(x, genotype=genotype))


def test_a_genotype_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="L=4"):
        tiny()(torch.randn(1, 3, 32, 32), genotype=Genotype(cell=CELL, path=(0, 1, 1, 1)))


@pytest.mark.parametrize("layers", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_paths_are_the_most_probable_paths_in_order(layers, seed):
    torch.manual_seed(seed)
    beta = torch.randn(layers, 4, 3)
    everything = sorted(legal_paths(layers), key=lambda p: -log_prob(beta, p))
    found = top_paths(beta, len(everything) + 5)
    assert [p for p, _ in found] == everything
    assert found[0][0] == decode_path(beta)
    assert all(s == pytest.approx(log_prob(beta, p)) for p, s in found)
    assert [p for p, _ in top_paths(beta, 3)] == everything[:3]


@pytest.fixture
def search_checkpoint(tiny_settings, tmp_path):
    """A checkpoint of an untrained tiny supernet with the decoder head, as the search writes it."""
    import random

    cfg = config_from_dict({**tiny_settings, "search_space": {**tiny_settings["search_space"], "head": "decoder"},
                            "selection": {"path": "supernet", "path_candidates": 4, "recalibration_batches": 2}})
    net = SuperNet(8, layers=3, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16), head="decoder")
    state = {"model": net.state_dict(), "config": config_to_dict(cfg),
             "search_space": {**search_space_of(cfg), "num_classes": 8}}
    (tmp_path / "ckpt").mkdir()
    write_checkpoint_dir(tmp_path / "ckpt", state, {"epoch": 1})
    return str(tmp_path / "ckpt"), net, sample_cell(2, random.Random(0))


def test_select_path_scores_the_candidates_and_keeps_the_best(search_checkpoint):
    from orchestrator.train.supernet_score import load_supernet, score_genotypes, select_path

    path, net, cell = search_checkpoint
    trained = load_supernet(path)
    assert torch.equal(trained.net.beta, net.beta) and trained.net.head == "decoder"
    genotype, rows = select_path(trained)
    assert len(rows) == 4 and [r["path"] for r in rows] == [list(p) for p, _ in top_paths(net.beta, 4)]
    best = max(rows, key=lambda r: r["supernet_miou"])
    assert list(genotype.path) == best["path"] and genotype.cell == trained.genotype().cell
    before = {k: v.clone() for k, v in trained.net.state_dict().items()}
    scores = score_genotypes(trained, [Genotype(cell=cell, path=(0, 1, 2))] * 2)
    assert scores[0] == scores[1]  # recalibration starts from the same weights each time
    assert all(torch.equal(before[k], v) for k, v in trained.net.state_dict().items())


def test_a_supernet_that_predicts_one_class_scores_that_class_share(search_checkpoint):
    """Known answer: with the classifier's weights zero and one bias up, every pixel is predicted as class 0 on
    every path, so each candidate's mIoU is class 0's share of the labelled pixels over the classes present
    (IoU 0 for the other classes in the labels); all tie, and the tie goes to the most probable path."""
    from orchestrator.data import IGNORE_INDEX, role_dataset
    from orchestrator.train.supernet_score import load_supernet, select_path

    trained = load_supernet(search_checkpoint[0])
    with torch.no_grad():
        trained.net.decoder.classifier.weight.zero_()
        trained.net.decoder.classifier.bias.copy_(torch.eye(8)[0])
    d = trained.cfg.data
    labels = torch.stack([y for _, y in role_dataset(d, "select", train=False, crop_size=d.crop_size)])
    labels = labels[labels != IGNORE_INDEX]
    classes = set(labels.unique().tolist()) | {0}
    expected = float((labels == 0).sum()) / labels.numel() / len(classes)
    genotype, rows = select_path(trained)
    assert [r["supernet_miou"] for r in rows] == pytest.approx([expected] * 4)
    assert list(genotype.path) == rows[0]["path"]


@pytest.mark.parametrize(("metric", "rows", "winner"), [
    ("val_miou", [(5, 0.30), (2, 0.40), (5, 0.35)], 2),  # most epochs first, then mIoU
    ("val_miou", [(5, 0.30), (5, 0.30)], 0),  # a tie goes to the better-ranked candidate
    ("val_miou", [(5, float("nan")), (5, 0.10)], 1),  # a failed short retrain never wins
    ("val_miou", [(None, float("nan")), (3, 0.20)], 1),
    ("train_loss", [(5, 1.10), (2, 0.90), (5, 1.05)], 2),  # a loss: the lowest wins
    ("train_loss", [(5, float("nan")), (5, 3.00)], 1),
    ("val_loss", [(5, 1.20), (5, 1.20), (5, 1.30)], 0),
])
def test_the_short_retrain_winner(metric, rows, winner):
    from orchestrator.sweep.selection import pick_winner

    assert pick_winner([{"epochs": e, metric: v} for e, v in rows], metric) == winner


def _trial(label, seed):
    return {"label": label, "genotype": {"path": [0, 1], "cell": []}, "seed": seed}


@pytest.mark.parametrize(("metrics", "expected"), [
    # (label, seed) -> reported; expected (label, train_loss mean, epochs) per candidate, in rank order
    ({("c0", 3): {"train_loss": 1.0, "epoch": 5}, ("c0", 4): {"train_loss": 2.0, "epoch": 5},
      ("c1", 3): {"train_loss": 0.5, "epoch": 5}, ("c1", 4): {"train_loss": 0.7, "epoch": 5}},
     [("c0", 1.5, 5), ("c1", 0.6, 5)]),
    ({("c0", 3): {"train_loss": 1.0, "epoch": 5}, ("c0", 4): {"train_loss": float("nan"), "epoch": 2},
      ("c1", 3): {"train_loss": 0.5, "epoch": 5}}, [("c0", None, 2), ("c1", None, None)]),  # a failed seed fails it
])
def test_a_candidate_ranks_by_the_mean_over_its_seeds(metrics, expected):
    from orchestrator.sweep.selection import candidate_rows, pick_winner

    trials = [_trial(label, seed) for label in ("c0", "c1") for seed in (3, 4)]
    rows = candidate_rows(trials, metrics)
    assert [r["label"] for r in rows] == ["c0", "c1"] and all(sorted(r["seeds"]) == ["3", "4"] for r in rows)
    for row, (label, loss, epochs) in zip(rows, expected, strict=True):
        assert row["label"] == label and row["epochs"] == epochs
        assert (math.isnan(row["train_loss"]) if loss is None else row["train_loss"] == pytest.approx(loss))
    if expected[1][1] is not None:
        assert pick_winner(rows, "train_loss") == 1


@pytest.mark.parametrize(("path", "top_k"), [("viterbi", 1), ("viterbi", 3), ("supernet", 1), ("supernet", 3)])
def test_final_candidates_rank_paths_with_the_decoded_cell(search_checkpoint, tmp_path, path, top_k):
    from orchestrator.sweep.final import candidate_genotypes
    from orchestrator.train.supernet_score import load_supernet

    ckpt, net, _ = search_checkpoint
    cfg = load_supernet(ckpt).cfg
    cfg.selection.path, cfg.selection.top_k = path, top_k
    ranked = candidate_genotypes(cfg, ckpt, str(tmp_path))
    assert ranked[0].cell == net.genotype().cell and len(set(ranked)) == len(ranked)
    if path == "viterbi":
        assert ranked[0] == net.genotype() and len(ranked) == top_k
    else:
        scores = {tuple(r["path"]): r["supernet_miou"]
                  for r in json.loads((tmp_path / "path_scores.json").read_text())["candidates"]}
        assert [scores[g.path] for g in ranked] == sorted(scores.values(), reverse=True)[:top_k]


@pytest.mark.parametrize("path", ["viterbi", "supernet"])
def test_sampled_candidates_follow_the_selected_first_one(search_checkpoint, tmp_path, path):
    """selection.candidates=sampled: the first candidate is the one ``path`` selects, then distinct draws from
    alpha and beta (search_space.sample_tilted_genotypes)."""
    from orchestrator.sweep.final import candidate_genotypes
    from orchestrator.train.supernet_score import load_supernet

    ckpt, net, _ = search_checkpoint
    cfg = load_supernet(ckpt).cfg
    cfg.selection.path, cfg.selection.candidates, cfg.selection.top_k = path, "sampled", 6
    ranked = candidate_genotypes(cfg, ckpt, str(tmp_path))
    cfg.selection.candidates, cfg.selection.top_k = "decoded", 1
    assert ranked[0] == candidate_genotypes(cfg, ckpt, str(tmp_path))[0]
    assert len(set(ranked)) == 6 and all(g.layers == 3 and g.blocks == 2 for g in ranked)
    assert len({g.cell for g in ranked}) > 1  # cells are drawn too, not only paths


@pytest.mark.parametrize(("paths", "expected"), [
    ([(0, 0, 1), (0, 1, 1), (0, 1, 2), (0, 0, 0)], [(0, 0, 1), (0, 1, 2), (0, 0, 0), (0, 1, 1)]),
    ([(0, 0, 0), (0, 0, 1)], [(0, 0, 0), (0, 0, 1)]),
    ([(1, 1, 1)], [(1, 1, 1)]),
])
def test_one_per_depth_puts_the_best_of_each_deepest_level_first(paths, expected):
    from orchestrator.sweep.final import one_per_depth

    assert one_per_depth(paths) == expected


@pytest.mark.slow
@pytest.mark.cluster
def test_the_chain_scores_paths_and_short_retrains_the_top_candidates(ray_session, tiny_settings, tmp_path):
    """The whole chain with the departures switched on: the decoder head, paths scored by the supernet, the top 2
    candidates short-retrained at 2 seeds each under ASHA on the training loss, the winner retrained and recorded
    in the summary."""
    from orchestrator.config import config_from_dict
    from orchestrator.sweep.chain import run_experiment

    settings = {**tiny_settings, "storage_path": str(tmp_path),
                "search_space": {**tiny_settings["search_space"], "head": "decoder"},
                "search": {"epochs": 2, "warmup_epochs": 1},
                "selection": {"path": "supernet", "path_candidates": 4, "recalibration_batches": 1, "top_k": 2,
                              "short_epochs": 1, "grace_period": 1, "metric": "train_loss", "seeds": 2},
                "retrain": {"epochs": 8, "crop_size": 32, "batch_size": 2, "filter_multiplier": 2}}
    summary = run_experiment(config_from_dict(settings), str(tmp_path), "chain")
    final = tmp_path / "chain" / "final"
    scores = json.loads((final / "path_scores.json").read_text())
    selection = json.loads((final / "selection.json").read_text())
    assert len(scores["candidates"]) == 4 and len(selection["candidates"]) == 2
    ranked = sorted(scores["candidates"], key=lambda r: -r["supernet_miou"])
    assert [c["path"] for c in selection["candidates"]] == [r["path"] for r in ranked[:2]]
    winner = next(c for c in selection["candidates"] if c["label"] == selection["winner"])
    assert selection["metric"] == "train_loss"
    assert winner["train_loss"] == min(c["train_loss"] for c in selection["candidates"])
    for c in selection["candidates"]:  # seeds 0 and 1 of each candidate, ranked by their mean
        assert sorted(c["seeds"]) == ["0", "1"] and c["epochs"] == 1
        assert c["train_loss"] == pytest.approx(sum(r["train_loss"] for r in c["seeds"].values()) / 2)
    assert summary["genotype"] == winner["genotype"] and summary["selection"]["short_retrains"] == selection
    assert json.loads((final / "genotype.json").read_text()) == winner["genotype"]
    assert summary["retrain"]["val_miou"] > constant_predictor_miou(summary["config"], "select")
