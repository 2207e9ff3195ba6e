"""The batched supernet forward computes the paper's math: it matches the plain per-path reference forward
on the same weights (outputs, gradients of alpha, beta and every weight, BN running statistics), for the whole
supernet, for one cell (`cell_batched.SearchCell` against `cell_search.Cell`), and its hand-written backwards
(`cell_autograd`) match finite differences."""

from __future__ import annotations

import copy

import pytest
import torch

from search_space import OP_FAMILIES, PRIMITIVES, SuperNet, num_edges
from search_space.cell_autograd import bn_view, separable_bn, separable_linear
from search_space.cell_batched import SearchCell
from search_space.cell_plan import fast_plan
from search_space.cell_search import Cell

TINY = dict(layers=3, filter_multiplier=2, stem_channels=(8, 8, 16))

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


def _pair(family: str, blocks: int, **kwargs) -> tuple[SuperNet, SuperNet]:
    torch.manual_seed(blocks)
    net = SuperNet(4, blocks=blocks, ops=family, **TINY, **kwargs).double()
    with torch.no_grad():  # alpha and beta far from uniform, so every op and path weighs differently
        net.alpha.normal_()
        net.beta.normal_()
    return net, copy.deepcopy(net)


def _step(net: SuperNet, x: torch.Tensor, cotangent: torch.Tensor, reference: bool) -> torch.Tensor:
    net.zero_grad(set_to_none=True)
    y = net.forward_reference(x) if reference else net(x)
    (y * cotangent).sum().backward()
    return y.detach()


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, name: str, floor: float = 1e-12) -> None:
    """max |a - b| <= rtol * max |b|: relative to the tensor's scale (float64 sums differ only in order)."""
    err = (a - b).abs().max().item()
    assert err <= rtol * max(b.abs().max().item(), floor), f"{name}: max error {err:.3g}"


def _assert_same(fast: SuperNet, ref: SuperNet, y_fast: torch.Tensor, y_ref: torch.Tensor, rtol: float = 1e-9
                 ) -> None:
    _close(y_fast, y_ref, rtol, "output")
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        q = grads[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            _close(p.grad, q.grad, rtol, name)
    buffers = dict(ref.named_buffers())
    for name, b in fast.named_buffers():
        _close(b.double(), buffers[name].double(), rtol, name, floor=1.0)  # running statistics are O(1)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("family, blocks", [("darts", 3), ("paper", 2)])
def test_batched_forward_matches_reference_train_then_eval(family, blocks, recompute):
    fast, ref = _pair(family, blocks, recompute_units=recompute)
    assert all(node.cell.plan is not None for node in fast.nodes.values())  # the batched path is taken
    size = (33, 27)
    for _ in range(2):  # train mode twice (running statistics accumulate), then eval mode
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        cotangent = torch.randn(2, 4, *size, dtype=torch.float64)
        _assert_same(fast, ref, _step(fast, x, cotangent, False), _step(ref, x, cotangent, True))
    fast.eval()
    ref.eval()
    _assert_same(fast, ref, _step(fast, x, cotangent, False), _step(ref, x, cotangent, True))


@pytest.mark.parametrize("family, levels", [(f, True) for f in OP_FAMILIES] + [("darts", [0]), ("paper", [1, 3])])
def test_checkpointed_cells_match_reference_and_update_statistics_once(family, levels):
    """Also the smallest sizes: at a 32 crop the rate-32 level is 1x1."""
    fast, ref = _pair(family, 2, checkpoint_cells=levels)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    cotangent = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    _assert_same(fast, ref, _step(fast, x, cotangent, False), _step(ref, x, cotangent, True))


def _saved_bytes(net: SuperNet, x: torch.Tensor, reference: bool) -> int:
    """Bytes of the distinct storages a training forward keeps for backward."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.forward_reference(x) if reference else net(x)
    return sum(storages.values())


@pytest.mark.parametrize("family", OP_FAMILIES)
def test_batched_training_forward_stores_under_six_tenths_of_the_reference(family):
    """Separable units keep only their input and BN statistics (0.39 darts / 0.51 paper of the reference's
    bytes here); with ``recompute_units=False`` they also keep their depthwise outputs and BN inputs (0.73)."""
    torch.manual_seed(0)
    net = SuperNet(4, blocks=3, ops=family, **TINY)
    x = torch.randn(2, 3, 48, 48)
    reference = _saved_bytes(net, x, True)
    assert _saved_bytes(net, x, False) <= 0.6 * reference
    for node in net.nodes.values():
        node.cell.recompute_units = False
    assert _saved_bytes(net, x, False) > 0.65 * reference


def test_checkpoint_levels_are_checked():
    assert SuperNet(4, **TINY, checkpoint_cells=[0, 2]).checkpoint_levels == {0, 2}
    assert SuperNet(4, **TINY, checkpoint_cells=True).checkpoint_levels == {0, 1, 2, 3}
    assert not SuperNet(4, **TINY).checkpoint_levels
    with pytest.raises(ValueError, match="0..3"):
        SuperNet(4, **TINY, checkpoint_cells=[4])


def test_float32_close_to_float64_reference():
    fast, ref = _pair("paper", 3)
    fast.float()
    x = torch.randn(2, 3, 29, 35, dtype=torch.float64)
    cotangent = torch.randn(2, 4, 29, 35, dtype=torch.float64)
    y_fast = _step(fast, x.float(), cotangent.float(), False)
    y_ref = _step(ref, x, cotangent, True)
    _close(y_fast.double(), y_ref, 1e-4, "output")
    for p, q in ((fast.alpha, ref.alpha), (fast.beta, ref.beta)):
        _close(p.grad.double(), q.grad, 1e-4, "arch grad")


def test_unknown_op_structure_falls_back_to_reference():
    fast, ref = _pair("darts", 2)
    mixed = fast.nodes["1_0"].cell.edges[0]
    assert fast_plan(mixed) is not None
    for net in (fast, ref):  # an op the batched path does not know
        ops = net.nodes["1_0"].cell.edges[0].ops
        ops[4] = torch.nn.Sequential(torch.nn.Tanh(), ops[4])
    assert fast_plan(mixed) is None
    fast.nodes["1_0"].cell.plan = None
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    cotangent = torch.randn(2, 4, 24, 24, dtype=torch.float64)
    _assert_same(fast, ref, _step(fast, x, cotangent, False), _step(ref, x, cotangent, True))


def test_arch_step_gradients_match_reference():
    """``backward(inputs=arch_parameters())``, the arch step: the batched backward skips weight gradients."""
    fast, ref = _pair("darts", 2)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for net, y in ((fast, fast(x)), (ref, ref.forward_reference(x))):
        y.square().mean().backward(inputs=net.arch_parameters())
    for p, q in zip(fast.arch_parameters(), ref.arch_parameters(), strict=True):
        _close(p.grad, q.grad, 1e-9, "arch grad")
    assert all(p.grad is None for p in fast.weight_parameters())


def _cell_step(cell: Cell, inputs: list[torch.Tensor], cotangent: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Output, and gradients of the inputs and of every weight, of one forward and backward of ``cell``."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = cell(*leaves)
    params = list(cell.parameters())
    grads = torch.autograd.grad((y * cotangent).sum(), leaves + params)
    return y.detach(), list(grads)


@pytest.mark.parametrize("family", OP_FAMILIES)
@pytest.mark.parametrize("paths", [1, 3])
def test_batched_cell_matches_the_plain_cell(family, paths):
    """One cell, no supernet: train twice (running statistics accumulate), eval, eval without autograd."""
    torch.manual_seed(paths)
    ref = Cell(3, 3, family).double()
    fast = SearchCell(3, 3, family).double()
    fast.load_state_dict(ref.state_dict())
    assert fast.plan is not None
    weights = torch.softmax(2 * torch.randn(num_edges(3), len(PRIMITIVES), dtype=torch.float64), -1)
    probs = torch.softmax(torch.randn(paths, dtype=torch.float64), 0)
    for train in (True, True, False):
        fast.train(train)
        ref.train(train)
        inputs = [torch.randn(2, 3, 9, 7, dtype=torch.float64), torch.randn(2, paths, 3, 9, 7, dtype=torch.float64),
                  weights, probs]
        cotangent = torch.randn(2, 9, 9, 7, dtype=torch.float64)
        (y_fast, g_fast), (y_ref, g_ref) = _cell_step(fast, inputs, cotangent), _cell_step(ref, inputs, cotangent)
        _close(y_fast, y_ref, 1e-9, "output")
        for i, (a, b) in enumerate(zip(g_fast, g_ref, strict=True)):
            _close(a, b, 1e-9, f"gradient {i}")
        stats = ref.state_dict()
        for name, b in fast.state_dict().items():
            _close(b.double(), stats[name].double(), 1e-9, name, floor=1.0)
    with torch.no_grad():
        _close(fast(*inputs), ref(*inputs), 1e-9, "output without autograd")


@pytest.mark.parametrize("multiplier", [False, True])
@pytest.mark.parametrize("dilation", [1, 2])
def test_separable_units_backward_matches_finite_differences(multiplier, dilation):
    """`separable_linear` and `separable_bn` (recomputed in backward), in both depthwise layouts: a channel
    multiplier (stage 1: every slot reads the same input) and plain (later stages: each slot its own input)."""
    torch.manual_seed(dilation)
    groups, slots, c = 2, 2, 2
    x = torch.randn(2 * groups, c if multiplier else slots * c, 4, 5, dtype=torch.float64, requires_grad=True)
    dw = torch.randn(slots * c, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(slots, c, c, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(groups * slots * c, dtype=torch.float64, requires_grad=True)
    stats = torch.zeros(2, groups * slots * c, dtype=torch.float64)
    with torch.no_grad():  # the plain composition of built-in ops
        y = separable_linear(x, dw, pw, dilation)
    _close(separable_linear(x, dw, pw, dilation), y, 1e-12, "separable_linear")
    assert torch.autograd.gradcheck(lambda *a: separable_linear(*a, dilation), (x, dw, pw))

    def unit(x, dw, pw, scale):
        return separable_bn(x, dw, pw, scale, dilation, groups, stats[0], stats[1], 1e-5)

    assert torch.autograd.gradcheck(unit, (x, dw, pw, scale))
    flat = bn_view(y, groups)  # the batch statistics it writes: per path, slot and channel
    _close(stats[0], flat.mean((0, 2)), 1e-12, "mean")
    _close(stats[1], flat.var((0, 2)), 1e-12, "variance")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", OP_FAMILIES)
def test_batched_forward_matches_reference_on_cuda(family):
    fast, ref = _pair(family, 2)
    fast.cuda()
    x = torch.randn(2, 3, 33, 27, dtype=torch.float64)
    cotangent = torch.randn(2, 4, 33, 27, dtype=torch.float64)
    y_fast = _step(fast, x.cuda(), cotangent.cuda(), False).cpu()
    y_ref = _step(ref, x, cotangent, True)
    _assert_same(fast.cpu(), ref, y_fast, y_ref, rtol=1e-7)
