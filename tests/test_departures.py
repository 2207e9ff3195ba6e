"""Departures from the paper's decoding, each a config option measured against the faithful search
(docs/validation.md): the cap on parameter-free ops in the decoded cell. No Ray."""

from __future__ import annotations

import pytest
import torch

from orchestrator.train.metrics import param_free_ops
from search_space import Genotype
from search_space.decoding import cap_param_free, decode_cell
from search_space.operations import PARAMETER_FREE, PRIMITIVES


def collapsed_alpha(edges: int = 9, seed: int = 0) -> torch.Tensor:
    """Alpha whose every edge prefers skip_connect, the DARTS collapse."""
    torch.manual_seed(seed)
    alpha = torch.randn(edges, len(PRIMITIVES))
    alpha[:, PRIMITIVES.index("skip_connect")] += 5.0
    return alpha


@pytest.mark.parametrize("cap", [0, 1, 2, 3, 6])
def test_the_cap_keeps_the_strongest_parameter_free_ops_and_the_inputs(cap):
    alpha = collapsed_alpha()
    cell = decode_cell(alpha)
    capped = cap_param_free(cell, alpha, cap)
    assert param_free_ops(Genotype(cell=capped, path=(0, 0, 0))) == min(cap, 6)
    assert [[inp for _, inp in block] for block in capped] == [[inp for _, inp in block] for block in cell]
    weights = torch.softmax(alpha, dim=-1)
    offsets = [0, 2, 5]
    kept = sorted(float(weights[offsets[b] + inp, PRIMITIVES.index(op)])
                  for b, block in enumerate(capped) for op, inp in block if op in PARAMETER_FREE)
    dropped = [float(weights[offsets[b] + inp, PRIMITIVES.index(op)]) for b, block in enumerate(cell)
               for (op, inp), (new, _) in zip(block, capped[b], strict=True) if op != new]
    assert not kept or not dropped or min(kept) >= max(dropped)
    for b, block in enumerate(capped):
        for op, inp in block:
            if op not in PARAMETER_FREE:  # a replaced op is the best op with weights on its edge
                row = weights[offsets[b] + inp]
                best = max((k for k, n in enumerate(PRIMITIVES) if n != "none" and n not in PARAMETER_FREE),
                           key=lambda k: float(row[k]))
                assert op == PRIMITIVES[best]


def test_a_cell_under_the_cap_is_left_as_decoded():
    alpha = torch.zeros(9, len(PRIMITIVES))
    alpha[:, PRIMITIVES.index("sep_conv_3x3")] = 1.0
    assert cap_param_free(decode_cell(alpha), alpha, 0) == decode_cell(alpha)


def test_the_centred_path_follows_a_weak_preference_that_viterbis_prior_hides():
    from search_space.decoding import decode_path, decode_path_centred

    beta = torch.zeros(4, 4, 3)
    beta[:, :, 2] = 0.2  # every node leans a little towards the next coarser rate
    assert max(decode_path(beta)) <= 1  # log 1/2 at rate 4 against log 1/3 elsewhere: the prior wins
    assert decode_path_centred(beta)[:3] == (1, 2, 3)
    assert decode_path_centred(torch.zeros(4, 4, 3)) == (0, 0, 0, 0)  # no preference at all: ties go low


@pytest.mark.parametrize("seed", range(5))
def test_the_centred_path_and_viterbi_agree_once_beta_is_sharp(seed):
    import random

    from search_space.decoding import decode_path, decode_path_centred
    from search_space.sampling import sample_path

    path = sample_path(6, random.Random(seed))
    beta = torch.zeros(6, 4, 3)
    prev = 0
    for layer, level in enumerate(path):
        beta[layer, prev, level - prev + 1] = 5.0  # direction index: -1 -> 0, 0 -> 1, +1 -> 2
        prev = level
    assert decode_path(beta) == decode_path_centred(beta) == path
