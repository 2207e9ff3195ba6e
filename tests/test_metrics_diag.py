"""Search diagnostics (orchestrator/train/metrics.py): parameter-free ops of a genotype, beta entropy per layer, and
their place in the epoch report and TensorBoard scalars."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.train.metrics import beta_entropy, beta_entropy_per_layer, end_levels, param_free_ops
from orchestrator.train.search_loop import EpochFacts, epoch_metrics
from orchestrator.train.tb_logging import SearchBoard
from search_space import AUTODEEPLAB, OPS, PARAMETER_FREE, PRIMITIVES, Genotype, SuperNet


@pytest.mark.parametrize("family", list(OPS))
@pytest.mark.parametrize("name", [p for p in PRIMITIVES if p != "none"])
def test_parameter_free_is_exactly_the_weightless_ops(family: str, name: str):
    weights = sum(p.numel() for p in OPS[family][name](8, 1, True).parameters())
    assert (weights == 0) == (name in PARAMETER_FREE)


def _cell(ops: list[str]) -> tuple:
    return tuple(((a, 0), (b, 1)) for a, b in zip(ops[::2], ops[1::2], strict=True))


@pytest.mark.parametrize(("genotype", "expected"), [
    (AUTODEEPLAB, 0),
    (Genotype(cell=_cell(["skip_connect", "max_pool_3x3"]), path=(0,)), 2),
    (Genotype(cell=_cell(["skip_connect", "sep_conv_3x3", "avg_pool_3x3", "dil_conv_5x5"]), path=(0, 1)), 2),
    (Genotype(cell=_cell(["sep_conv_5x5", "dil_conv_3x3"]), path=(1,)), 0),
])
def test_param_free_ops_counts_pooling_and_skip(genotype: Genotype, expected: int):
    assert param_free_ops(genotype) == expected


@pytest.mark.parametrize("layers", [1, 2, 3, 12])
def test_beta_entropy_per_layer_of_uniform_beta(layers: int):
    # beta = 0: every reachable node splits evenly over its legal edges (2 at levels 0 and 3, else 3)
    per_layer = beta_entropy_per_layer(torch.zeros(layers, 4, 3))
    edges = {0: 2, 1: 3, 2: 3, 3: 2}
    expected = [sum(math.log(edges[v]) for v in range(min(l, 3) + 1)) / (min(l, 3) + 1) for l in range(layers)]
    assert per_layer == pytest.approx(expected)


def test_beta_entropy_per_layer_sees_one_settled_layer():
    beta = torch.zeros(4, 4, 3)
    beta[2] = torch.tensor([0.0, 50.0, 0.0])  # layer 2's nodes all keep their level
    per_layer = beta_entropy_per_layer(beta)
    assert per_layer[2] == pytest.approx(0.0, abs=1e-12)
    assert all(h > 0.6 for i, h in enumerate(per_layer) if i != 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_beta_entropy_per_layer_is_consistent_with_beta_entropy(seed: int):
    beta = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(seed))
    nodes = [min(l, 3) + 1 for l in range(5)]  # reachable nodes per row
    per_layer = beta_entropy_per_layer(beta)
    assert sum(h * n for h, n in zip(per_layer, nodes, strict=True)) / sum(nodes) == pytest.approx(beta_entropy(beta))


def test_epoch_metrics_report_the_diagnostics():
    """alpha and beta set so that the decoded architecture, and so each diagnostic, is known by hand."""
    net = SuperNet(3, layers=3, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16))
    strong = {0: "max_pool_3x3", 1: "sep_conv_3x3", 2: "skip_connect", 3: "avg_pool_3x3"}  # edge 4: uniform, dropped
    with torch.no_grad():
        net.alpha.zero_()
        for edge, op in strong.items():
            net.alpha[edge, PRIMITIVES.index(op)] = 10.0
        net.beta.zero_()
        net.beta[:, :, 2] = 50.0  # every node moves to the next coarser level where it can
    cm = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 4]])  # IoU 3/5, 2/4, 4/4; 9 of 11 pixels right
    facts = EpochFacts(1, 10, 10, torch.tensor([2.0, 0.0]), False, (0.1, 0.01), (1.0, 0.5), 4)
    start = (torch.zeros_like(net.alpha), torch.zeros_like(net.beta))
    m = epoch_metrics(net, facts, {"cm": cm, "loss": 1.0}, start, "")
    assert m["genotype"] == Genotype(cell=((("max_pool_3x3", 0), ("sep_conv_3x3", 1)),
                                           (("skip_connect", 0), ("avg_pool_3x3", 1))),
                                     path=(1, 2, 3)).to_json(indent=None)
    assert m["param_free_ops"] == 3 and m["path"] == [1, 2, 3] and m["path_depth"] == 3
    assert m["beta_entropy_per_layer"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-15)  # every choice settled
    assert m["val_miou"] == pytest.approx((3 / 5 + 2 / 4 + 1) / 3) and m["val_pixel_acc"] == pytest.approx(9 / 11)
    assert m["alpha_delta"] == 10.0 and m["beta_delta"] == 50.0 and m["genotype_changed"]
    assert m["train_loss"] == pytest.approx(0.2) and math.isnan(m["arch_loss"]) and m["images_per_second"] == 4.0


class _Recorder:
    def __init__(self):
        self.scalars: dict[str, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag] = value


def test_search_board_logs_the_diagnostics():
    board = SearchBoard.__new__(SearchBoard)  # no event file: only the tag mapping is under test
    board.writer, board.class_names = _Recorder(), []
    board.scalars(3, {"param_free_ops": 2, "path_depth": 3, "beta_entropy_per_layer": [0.5, float("nan"), 0.25]})
    assert board.writer.scalars == {"arch/param_free_ops": 2.0, "arch/path_depth": 3.0,
                                    "arch/beta_entropy_layer0": 0.5, "arch/beta_entropy_layer2": 0.25}


def test_end_levels_start_at_the_prior_and_follow_a_settled_beta():
    """Zero beta: the chain's prior (0.31 0.37 0.23 0.09 at L=4). Beta that always goes one level deeper: at L=3 the
    path ends at stride 32 with certainty."""
    assert end_levels(torch.zeros(4, 4, 3)) == pytest.approx([0.3079, 0.3727, 0.2269, 0.0926], abs=1e-4)
    deeper = torch.zeros(3, 4, 3)
    deeper[:, :, 2] = 50.0
    assert end_levels(deeper) == pytest.approx([0.0, 0.0, 0.0, 1.0], abs=1e-6)
