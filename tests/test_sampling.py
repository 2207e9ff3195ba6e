"""Uniform random genotypes (search_space/sampling.py): legality, counts against enumeration, uniformity,
distinctness, determinism, exclusion."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from search_space import (
    AUTODEEPLAB,
    CELL_OPS,
    PRIMITIVES,
    Genotype,
    count_cells,
    count_paths,
    legal_cells,
    legal_paths,
    sample_cell,
    sample_genotype,
    sample_genotypes,
    sample_path,
    sample_tilted_cell,
    sample_tilted_genotypes,
    sample_tilted_path,
    space_size,
)
from search_space.genotypes import _check_path


def chi_square_ok(counts: Counter, categories: list, draws: int) -> bool:
    """Pearson's chi-square of ``counts`` against uniform over ``categories``, below mean + 5 standard
    deviations of the chi-square distribution (df + 5 sqrt(2 df)): a uniform sampler fails with probability
    well under 1e-4, and the seeds are fixed, so the test is deterministic."""
    expected = draws / len(categories)
    stat = sum((counts[c] - expected) ** 2 / expected for c in categories)
    df = len(categories) - 1
    return stat < df + 5 * math.sqrt(2 * df)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6])
def test_count_paths_matches_enumeration(layers: int):
    paths = legal_paths(layers)
    assert count_paths(layers) == len(paths) == len(set(paths))
    for path in paths:
        _check_path(path, layers)


@pytest.mark.parametrize(("layers", "expected"), [(1, 2), (2, 5)])
def test_count_paths_small_by_hand(layers: int, expected: int):
    # layer 1: {0, 1}; layer 2: 0 -> {0, 1}, 1 -> {0, 1, 2}
    assert count_paths(layers) == expected


def test_the_published_path_is_legal_and_the_paper_space_is_counted():
    assert AUTODEEPLAB.path in legal_paths(12)
    assert count_paths(12) == len(legal_paths(12))


@pytest.mark.parametrize("blocks", [1, 2])
def test_count_cells_matches_enumeration(blocks: int):
    cells = legal_cells(blocks)
    assert count_cells(blocks) == len(cells) == len(set(cells))


@pytest.mark.parametrize(("layers", "blocks"), [(1, 1), (3, 2), (12, 5)])
def test_space_size_is_paths_times_cells(layers: int, blocks: int):
    assert space_size(layers, blocks) == count_paths(layers) * count_cells(blocks)


@pytest.mark.parametrize(("layers", "blocks"), [(1, 1), (4, 3), (12, 5)])
def test_sampled_genotypes_are_legal_and_canonical(layers: int, blocks: int):
    rng = random.Random(0)
    for _ in range(200):
        g = sample_genotype(layers, blocks, rng)
        assert isinstance(g, Genotype) and (g.layers, g.blocks) == (layers, blocks)
        _check_path(g.path, layers)
        for b, ((op_a, a), (op_b, c)) in enumerate(g.cell):
            assert 0 <= a < c < b + 2  # distinct inputs, listed by index as decode_cell lists them
            assert op_a in CELL_OPS and op_b in CELL_OPS


@pytest.mark.parametrize("layers", [2, 3])
def test_sample_path_is_uniform(layers: int):
    # A forward walk that picks each next level uniformly would favour paths through level 0 (5 paths at
    # L=2: 1/4, 1/4 versus 1/6 x 3); at 20000 draws the chi-square bound rejects it.
    paths, draws = legal_paths(layers), 20000
    rng = random.Random(1)
    counts = Counter(sample_path(layers, rng) for _ in range(draws))
    assert set(counts) == set(paths)
    assert chi_square_ok(counts, paths, draws)


def test_sample_cell_is_uniform():
    cells, draws = legal_cells(1), 20000
    rng = random.Random(2)
    counts = Counter(sample_cell(1, rng) for _ in range(draws))
    assert set(counts) == set(cells)
    assert chi_square_ok(counts, cells, draws)


def test_sample_cell_pairs_are_uniform():
    # block 2 has inputs 0..3: six unordered pairs, equally likely
    rng = random.Random(3)
    draws = 12000
    counts = Counter(tuple(inp for _, inp in sample_cell(3, rng)[2]) for _ in range(draws))
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    assert set(counts) == set(pairs)
    assert chi_square_ok(counts, pairs, draws)


@pytest.mark.parametrize(("layers", "blocks", "k"), [(1, 1, 98), (3, 2, 50), (12, 5, 20)])
def test_sample_genotypes_distinct_and_deterministic(layers: int, blocks: int, k: int):
    first = sample_genotypes(layers, blocks, k, seed=7)
    assert len(first) == k == len(set(first))
    assert sample_genotypes(layers, blocks, k, seed=7) == first
    assert sample_genotypes(layers, blocks, k, seed=8) != first


def test_sample_genotypes_can_exhaust_a_tiny_space():
    everything = sample_genotypes(1, 1, space_size(1, 1), seed=0)
    assert {(g.path, g.cell) for g in everything} == {(p, c) for p in legal_paths(1) for c in legal_cells(1)}


@pytest.mark.parametrize("extra", [1, 10])
def test_sample_genotypes_refuses_more_than_the_space(extra: int):
    with pytest.raises(ValueError, match=r"cannot draw \d+ distinct genotypes.*holds 98"):
        sample_genotypes(1, 1, 98 + extra, seed=0)


def test_sample_genotypes_skips_excluded():
    excluded = sample_genotypes(1, 1, 40, seed=0)
    rest = sample_genotypes(1, 1, 98 - 40, seed=1, exclude=excluded)
    assert not set(rest) & set(excluded)
    assert len(set(rest) | set(excluded)) == 98
    with pytest.raises(ValueError, match="40 are excluded, leaving 58"):
        sample_genotypes(1, 1, 59, seed=1, exclude=excluded)


def test_exclusion_ignores_pair_order_and_other_spaces():
    g = sample_genotypes(1, 1, 1, seed=0)[0]
    swapped = Genotype(cell=tuple((b, a) for a, b in g.cell), path=g.path)
    other = sample_genotypes(2, 1, 1, seed=0)[0]  # another space: does not shrink this one
    rest = sample_genotypes(1, 1, 97, seed=0, exclude=[swapped, other])
    assert g not in rest


@pytest.mark.parametrize(("layers", "blocks"), [(0, 1), (1, 0)])
def test_empty_spaces_are_refused(layers: int, blocks: int):
    with pytest.raises(ValueError, match="must be >= 1"):
        sample_genotype(layers, blocks, random.Random(0))


# ------------------------------------------------------------------------------------------------ tilted


def _exact_path_probs(beta: torch.Tensor) -> dict[tuple[int, ...], float]:
    """P(path) proportional to exp(sum of the node-centred beta logits on it), by enumeration."""
    centred = beta.clone()
    for layer in range(beta.shape[0]):
        for level in range(4):
            legal = [d for d, step in enumerate((-1, 0, 1)) if 0 <= level + step < 4]
            centred[layer, level, legal] -= beta[layer, level, legal].mean()
    weights = {}
    for path in legal_paths(beta.shape[0]):
        prev, total = 0, 0.0
        for layer, level in enumerate(path):
            total += float(centred[layer, prev, level - prev + 1])
            prev = level
        weights[path] = math.exp(total)
    z = sum(weights.values())
    return {p: w / z for p, w in weights.items()}


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_tilted_paths_follow_beta_and_are_uniform_when_it_is_flat(scale):
    torch.manual_seed(1)
    beta = scale * torch.randn(3, 4, 3)
    exact = _exact_path_probs(beta)
    if scale == 0.0:
        assert max(exact.values()) == pytest.approx(1 / count_paths(3))
    rng, n = random.Random(0), 6000
    counts = Counter(sample_tilted_path(beta, rng) for _ in range(n))
    assert set(counts) <= set(exact)
    assert max(abs(counts[p] / n - q) for p, q in exact.items()) < 0.02


def test_tilted_cell_follows_alpha_exactly_on_one_block():
    torch.manual_seed(2)
    alpha = torch.randn(2, len(PRIMITIVES))
    logp = torch.log_softmax(alpha, dim=-1)
    exact = {cell: math.exp(sum(float(logp[j, PRIMITIVES.index(op)]) for op, j in cell[0]))
             for cell in legal_cells(1)}
    z = sum(exact.values())
    rng, n = random.Random(0), 8000
    counts = Counter(sample_tilted_cell(alpha, rng) for _ in range(n))
    assert set(counts) <= set(exact)
    assert max(abs(counts[c] / n - w / z) for c, w in exact.items()) < 0.02


def test_tilted_genotypes_are_distinct_legal_and_keep_the_first():
    torch.manual_seed(3)
    alpha, beta = torch.randn(9, len(PRIMITIVES)), torch.randn(4, 4, 3)
    first = sample_genotype(4, 3, random.Random(9))
    drawn = sample_tilted_genotypes(alpha, beta, 8, seed=0, first=first)
    assert drawn[0] == first and len(set(drawn)) == 8
    assert all(g.layers == 4 and g.blocks == 3 and all(b[0][1] < b[1][1] for b in g.cell) for g in drawn)
    assert drawn == sample_tilted_genotypes(alpha, beta, 8, seed=0, first=first)  # reproducible
    peaked = torch.full((4, 4, 3), -20.0)
    for layer, (src, dst) in enumerate(zip((0, 1, 2, 2), (1, 2, 2, 3), strict=True)):
        peaked[layer, src, dst - src + 1] = 20.0
    assert {g.path for g in sample_tilted_genotypes(alpha, peaked, 5, seed=1)} == {(1, 2, 2, 3)}
    with pytest.raises(ValueError, match="temperature"):
        sample_tilted_genotypes(alpha, beta, 2, seed=0, temperature=0)
