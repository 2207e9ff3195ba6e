"""Search space: ops, beta normalization, decoding, genotypes, supernet and retrain network."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from search_space import (
    AUTODEEPLAB,
    OP_FAMILIES,
    OPS,
    PRIMITIVES,
    DiscreteNet,
    Genotype,
    SuperNet,
    autodeeplab,
    beta_mask,
    decode_cell,
    decode_path,
    num_edges,
    reachable_levels,
    transition_probs,
)
from search_space.cell_search import Cell, MixedOp
from search_space.summary import count_macs, count_params
from search_space.supernet import HEAD_MIXES, HEADS, initial_arch_parameters, resize
from search_space.trellis import DIRECTIONS, end_level_probs

TINY = dict(layers=3, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16))


@pytest.mark.parametrize("family", OP_FAMILIES)
@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [9, 16])
def test_op_shape_backward_finite(family, name, stride, size):
    torch.manual_seed(0)
    op = OPS[family][name](6, stride, True)
    x = torch.randn(2, 6, size, size, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 6, math.ceil(size / stride), math.ceil(size / stride))
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for p in op.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if name == "none":
        assert torch.count_nonzero(y) == 0


def test_primitives_is_the_one_op_list():
    assert len(PRIMITIVES) == 8 and PRIMITIVES[0] == "none"
    for family in OP_FAMILIES:
        assert tuple(OPS[family]) == PRIMITIVES


@pytest.mark.parametrize("family", OP_FAMILIES)
def test_mixed_op_is_the_weighted_sum_over_the_op_table(family):
    """DARTS' MixedOp, ``sum_k w_k op_k(x)`` over every entry of PRIMITIVES (the zero op included)."""
    torch.manual_seed(0)
    mixed = MixedOp(4, family).double()
    assert len(mixed.ops) == len(PRIMITIVES)
    x, w = torch.randn(2, 4, 9, 9, dtype=torch.float64), torch.randn(len(PRIMITIVES), dtype=torch.float64)
    expected = w[0] * mixed.ops[0](x)
    for k in range(1, len(PRIMITIVES)):
        expected = expected + w[k] * mixed.ops[k](x)
    torch.testing.assert_close(mixed(x, w), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("blocks", [1, 3])
def test_cell_is_the_darts_cell_summed_over_paths(blocks):
    """Block b sums one mixed op per earlier state (s0, s1, blocks 0..b-1); the cell concatenates the blocks;
    the node's paths are summed with their probabilities."""
    torch.manual_seed(blocks)
    cell = Cell(3, blocks, "darts").double().eval()
    weights = torch.softmax(torch.randn(num_edges(blocks), len(PRIMITIVES), dtype=torch.float64), -1)
    s0, s1 = torch.randn(2, 3, 7, 7, dtype=torch.float64), torch.randn(2, 2, 3, 7, 7, dtype=torch.float64)
    probs = torch.tensor([0.3, 0.7], dtype=torch.float64)
    expected = 0
    for g in range(2):
        states, edge = [s0, s1[:, g]], 0
        for _ in range(blocks):
            block = 0
            for h in states:
                block = block + cell.edges[edge](h, weights[edge])
                edge += 1
            states.append(block)
        expected = expected + probs[g] * torch.cat(states[2:], 1)
    out = cell(s0, s1, weights, probs)
    assert out.shape == (2, 3 * blocks, 7, 7)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_paper_atrous_is_full_conv_darts_is_depthwise():
    paper = OPS["paper"]["dil_conv_3x3"](8, 1, True)
    darts = OPS["darts"]["dil_conv_3x3"](8, 1, True)
    assert [m.groups for m in paper.modules() if isinstance(m, torch.nn.Conv2d)] == [1]
    assert [m.groups for m in darts.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 1]


@pytest.mark.parametrize("layers", [1, 2, 3, 6, 12])
def test_beta_outgoing_probabilities_sum_to_one(layers):
    torch.manual_seed(layers)
    probs = transition_probs(torch.randn(layers, 4, 3))
    for layer in range(layers):
        for level in range(4):
            total = probs[layer, level].sum().item()
            if level in reachable_levels(layer):
                assert total == pytest.approx(1.0, abs=1e-6)
                edges = int(beta_mask(layers)[layer, level].sum())
                assert edges == (2 if level in (0, 3) else 3)
            else:
                assert total == 0.0  # unreachable node: no outgoing edges


def test_edge_rates_have_no_extra_constant():
    beta = torch.zeros(4, 4, 3)
    probs = transition_probs(beta)
    assert probs[3, 0, 1:].tolist() == pytest.approx([0.5, 0.5])  # rate 4: stay or go to 8
    assert probs[3, 3, :2].tolist() == pytest.approx([0.5, 0.5])  # rate 32: go to 16 or stay
    assert probs[3, 1].tolist() == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6])
def test_supernet_builds_only_reachable_nodes(layers):
    net = SuperNet(3, layers=layers, blocks=1, filter_multiplier=1, stem_channels=(4, 4, 4))
    built = {tuple(int(v) for v in key.split("_")) for key in net.nodes}
    assert built == {(layer, lv) for layer in range(1, layers + 1) for lv in reachable_levels(layer)}
    assert {int(k) for k in net.heads} == set(reachable_levels(layers))


def _legal_paths(layers):
    for path in itertools.product(range(4), repeat=layers):
        prev = 0
        ok = True
        for level in path:
            ok &= abs(level - prev) <= 1
            prev = level
        if ok:
            yield path


def _path_prob(probs, path):
    p, prev = 1.0, 0
    for layer, level in enumerate(path):
        p *= float(probs[layer, prev, DIRECTIONS.index(level - prev)])
        prev = level
    return p


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("seed", range(5))
def test_decode_path_equals_brute_force(layers, seed):
    torch.manual_seed(100 * layers + seed)
    beta = torch.randn(layers, 4, 3) * 2
    probs = transition_probs(beta).double()
    best = max(_legal_paths(layers), key=lambda path: _path_prob(probs, path))
    decoded = decode_path(beta)
    assert decoded == best
    Genotype(cell=AUTODEEPLAB.cell, path=decoded)  # legal by construction


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("seed", range(3))
def test_end_level_probs_sum_the_paths_ending_at_each_level(layers, seed):
    torch.manual_seed(100 * layers + seed)
    probs = transition_probs(torch.randn(layers, 4, 3) * 2).double()
    want = [0.0] * 4
    for path in _legal_paths(layers):
        want[path[-1]] += _path_prob(probs, path)
    got = end_level_probs(probs)
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    assert float(got.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("head_mix", HEAD_MIXES)
def test_head_mix_weights_each_level_head(head, head_mix):
    """"sum" adds every level's head as it is (the paper); "reach" weights each by beta's end-level probability."""
    torch.manual_seed(0)
    net = SuperNet(5, layers=4, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16), head=head, head_mix=head_mix)
    with torch.no_grad():
        net.beta.copy_(torch.randn_like(net.beta))
    outs = {}
    for level, module in net.heads.items():
        module.register_forward_hook(lambda m, i, o, level=int(level): outs.__setitem__(level, o))
    x = torch.randn(2, 3, 32, 32)
    y = net.eval()(x)
    ends = end_level_probs(transition_probs(net.beta))
    size = (32, 32) if head == "aspp" else (8, 8)
    mixed = sum((ends[level] if head_mix == "reach" else 1.0) * resize(out, size) for level, out in outs.items())
    want = mixed if head == "aspp" else resize(net.decoder(mixed, net.stem(x)[1]), (32, 32))
    assert len(outs) == 4 and torch.allclose(y, want, atol=1e-5)


def test_unknown_head_mix_is_refused():
    with pytest.raises(ValueError, match="unknown head mix 'mean'.*sum, reach"):
        SuperNet(5, head_mix="mean", **TINY)


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_decode_cell_two_distinct_nonzero(blocks, seed):
    torch.manual_seed(seed)
    alpha = torch.randn(num_edges(blocks), len(PRIMITIVES))
    alpha[:, 0] += 10  # "none" dominates every edge: it must still never be chosen
    cell = decode_cell(alpha)
    assert len(cell) == blocks
    for b, block in enumerate(cell):
        inputs = [inp for _, inp in block]
        assert len(set(inputs)) == 2 and all(0 <= i < b + 2 for i in inputs)
        assert all(op != "none" for op, _ in block)
    Genotype(cell=cell, path=(0,))


def test_decode_cell_ranks_by_strongest_nonzero_op_and_breaks_ties_deterministically():
    alpha = torch.zeros(num_edges(2), len(PRIMITIVES))
    # Block 0: all equal -> inputs 0, 1 and the first non-zero op.
    assert decode_cell(alpha)[0] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))
    # Block 1 (edges 2, 3, 4): input 2 strongest via sep_conv_5x5, then input 0 via dil_conv_3x3.
    alpha[4, PRIMITIVES.index("sep_conv_5x5")] = 3.0
    alpha[2, PRIMITIVES.index("dil_conv_3x3")] = 2.0
    alpha[3, PRIMITIVES.index("none")] = 9.0  # a strong zero op does not make input 1 strong
    assert decode_cell(alpha)[1] == (("dil_conv_3x3", 0), ("sep_conv_5x5", 2))
    assert decode_cell(alpha) == decode_cell(alpha.clone())


def test_genotype_json_round_trip_and_print():
    text = AUTODEEPLAB.to_json()
    assert Genotype.from_json(text) == AUTODEEPLAB
    assert eval(repr(AUTODEEPLAB), {"Genotype": Genotype}) == AUTODEEPLAB  # printable, pastable
    assert AUTODEEPLAB.rates == (4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        AUTODEEPLAB.path = (0,)  # immutable


@pytest.mark.parametrize(
    "data, message",
    [
        ({"cell": [[["conv_7x7", 0], ["sep_conv_3x3", 1]]], "path": [0]}, "unknown op 'conv_7x7'"),
        ({"cell": [[["none", 0], ["sep_conv_3x3", 1]]], "path": [0]}, "unknown op 'none'"),
        ({"cell": [[["sep_conv_3x3", 2], ["sep_conv_3x3", 1]]], "path": [0]}, "input 2 is out of range"),
        ({"cell": [[["sep_conv_3x3", 0]]], "path": [0]}, "expected exactly 2"),
        ({"cell": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]], "path": [0, 2]}, "from rate 4 to rate 16"),
        ({"cell": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]], "path": [2]}, "from rate 4 to rate 16"),
        ({"cell": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]], "path": [0, 4]}, "level 4 is not one of"),
        ({"cell": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]], "path": []}, "path is empty"),
        ({"cell": [], "path": [0]}, "cell is empty"),
        ({"cell": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]]}, "keys 'cell' and 'path'"),
    ],
)
def test_invalid_genotypes_rejected_clearly(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as err:
        Genotype.from_dict(data, source="my.json")
    assert "my.json" in str(err.value)


def test_genotype_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="g.json: not valid JSON"):
        Genotype.load(str(bad))
    with pytest.raises(ValueError, match="cannot read genotype file"):
        Genotype.load(str(tmp_path / "missing.json"))


def _check_grads(net, skip=()):
    for name, p in net.named_parameters():
        if any(name.startswith(s) for s in skip):
            continue
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("family", OP_FAMILIES)
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (48, 96)])
def test_tiny_supernet_forward_backward_any_crop(family, size):
    torch.manual_seed(0)
    net = SuperNet(5, ops=family, **TINY)
    y = net(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size)
    torch.nn.functional.cross_entropy(y, torch.randint(0, 5, (2, *size))).backward()
    _check_grads(net)
    assert net.alpha.grad.abs().sum() > 0
    # Only real trellis edges receive gradient.
    assert torch.all(net.beta.grad[~beta_mask(net.layers)] == 0)
    assert torch.all(net.beta.grad[beta_mask(net.layers)] != 0)


def test_param_groups_disjoint_and_complete():
    net = SuperNet(5, **TINY)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}
    assert net.alpha.shape == (num_edges(2), len(PRIMITIVES)) and net.beta.shape == (3, 4, 3)
    assert net.alpha.abs().max() < 1e-2 and net.beta.abs().max() < 1e-2  # 1e-3 * N(0, 1)


def test_the_supernet_starts_from_initial_arch_parameters(monkeypatch):
    """The arm study's frozen arm decodes `initial_arch_parameters`: it must be the supernet's own init."""
    from search_space import supernet

    drawn = []
    monkeypatch.setattr(supernet, "initial_arch_parameters",
                        lambda *a: drawn.append(initial_arch_parameters(*a)) or drawn[-1])
    net = SuperNet(5, **TINY)
    assert len(drawn) == 1 and torch.equal(net.alpha, drawn[0][0]) and torch.equal(net.beta, drawn[0][1])
    first = initial_arch_parameters(3, 2, torch.Generator().manual_seed(3))
    again = initial_arch_parameters(3, 2, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert first[0].shape == net.alpha.shape and first[1].shape == net.beta.shape


@pytest.mark.slow
def test_paper_size_supernet_forward_backward():
    torch.manual_seed(0)
    net = SuperNet(19, layers=12, blocks=5, filter_multiplier=8)
    assert len(net.nodes) == 2 + 3 + 4 * 10
    y = net(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(y, torch.randint(0, 19, (2, 32, 32))).backward()
    _check_grads(net)
    genotype = net.genotype()
    assert genotype.layers == 12 and genotype.blocks == 5


def test_discrete_net_from_decoded_supernet_genotype():
    torch.manual_seed(1)
    net = SuperNet(4, **TINY)
    with torch.no_grad():
        net.alpha.normal_()
        net.beta.normal_(std=2.0)
    genotype = net.genotype()
    model = DiscreteNet(genotype, 4, filter_multiplier=2, stem_channels=(8, 8, 16), aspp_channels=16)
    y = model(torch.randn(2, 3, 40, 52))
    assert y.shape == (2, 4, 40, 52)
    y.sum().backward()
    _check_grads(model)


@pytest.mark.parametrize("path", [(0,), (1,), (0, 1, 2, 3, 2, 1, 0), (1, 2, 3, 3), AUTODEEPLAB.path])
def test_discrete_net_any_legal_path(path):
    genotype = Genotype(cell=AUTODEEPLAB.cell, path=path)
    model = DiscreteNet(genotype, 3, filter_multiplier=2, stem_channels=(8, 8, 16), aspp_channels=8)
    y = model(torch.randn(2, 3, 35, 29))
    assert y.shape == (2, 3, 35, 29)
    y.mean().backward()
    _check_grads(model)


@pytest.mark.parametrize("path", [(0, 0, 1, 1), (0, 1, 2, 3)])
def test_discrete_net_search_head(path):
    """The single-path network the supernet scores: SearchASPP at the last rate, no decoder."""
    torch.manual_seed(0)
    genotype = Genotype(cell=AUTODEEPLAB.cell[:2], path=path)
    model = DiscreteNet(genotype, 3, filter_multiplier=2, stem_channels=(8, 8, 16), head="search")
    assert not hasattr(model, "decoder")
    assert model.search_head.branches[1][0].dilation == (96 // 2 ** (path[-1] + 2),) * 2
    y = model(torch.randn(2, 3, 33, 40))
    assert y.shape == (2, 3, 33, 40)
    y.mean().backward()
    _check_grads(model)
    with pytest.raises(ValueError, match="unknown head"):
        DiscreteNet(genotype, 3, filter_multiplier=2, stem_channels=(8, 8, 16), head="fcn")


def _readme_table() -> dict[str, tuple[float, float]]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| Auto-DeepLab-([SML]) \| ([0-9.]+) \| ([0-9.]+) \|", text, re.M)
    return {variant: (float(params), float(madds)) for variant, params, madds in rows}


PUBLISHED = _readme_table()
"""Params (M) and multiply-adds at 1024x2048 (B) of the published variants, read from the README's table (what
``python -m search_space.summary --variant S --variant M --variant L --size 1024x2048`` prints); the params are
the paper's Table 2."""


def test_the_readme_lists_every_published_variant():
    assert sorted(PUBLISHED) == ["L", "M", "S"]


def _on_meta(variant: str, size: tuple[int, int]) -> tuple[int, int]:
    """(params, multiply-adds at ``size``) of a published variant built on the meta device: shapes only, so the
    forward at 1024x2048 costs no arithmetic and no memory (``count_macs``'s input is made there too)."""
    with torch.device("meta"):
        model = autodeeplab(variant, 19)
        return count_params(model), count_macs(model, size)


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_published_variants_have_the_readme_params_and_multiply_adds(variant: str):
    params, madds = _on_meta(variant, (1024, 2048))
    assert (f"{params / 1e6:.2f}", f"{madds / 1e9:.2f}") == tuple(f"{v:.2f}" for v in PUBLISHED[variant])


@pytest.mark.slow
def test_autodeeplab_s_forward_backward_and_macs():
    model = autodeeplab("S", 19)
    y = model(torch.randn(2, 3, 65, 65))
    assert y.shape == (2, 19, 65, 65)
    y.mean().backward()
    _check_grads(model)
    # a real forward counts what the meta-device count above counts
    assert (count_params(model), count_macs(model, (64, 128))) == _on_meta("S", (64, 128))


def test_unknown_variant_and_family_rejected():
    with pytest.raises(ValueError, match="unknown Auto-DeepLab variant 'XL'"):
        autodeeplab("XL", 19)
    with pytest.raises(ValueError, match="unknown op family 'resnet'"):
        SuperNet(3, ops="resnet", **TINY)


def test_summary_cli_reports_variants_and_genotype(tmp_path, capsys):
    from search_space.summary import main

    assert main(["--variant", "S", "--size", "65x65"]) == 0
    out = capsys.readouterr().out
    assert "| Auto-DeepLab-S | 10.15 |" in out
    path = tmp_path / "g.json"
    path.write_text(Genotype(cell=AUTODEEPLAB.cell, path=(0, 1)).to_json())
    assert main(["--genotype", str(path), "--filter-multiplier", "4", "--size", "64x64"]) == 0
    path.write_text('{"cell": [], "path": [0]}')
    assert main(["--genotype", str(path)]) == 2
    assert "cell is empty" in capsys.readouterr().err
