"""The searchable cell (paper Sec. 3.1): B blocks, every edge a mixed op weighted by softmax(alpha).

Alpha has one row per edge (block i takes H^{l-2}, H^{l-1} and blocks 0..i-1: i + 2 edges) and one column
per entry of `PRIMITIVES`; it is owned by the `SuperNet` and shared by every cell.

A node of the trellis applies the same cell to up to three preprocessed H^{l-1} inputs (one per incoming
path, "G" paths) with one shared H^{l-2}. Two forwards compute the same math on the same weights:

- `SearchCell.forward_reference`: plain, one module call per path, edge and op (the edges that read
  H^{l-2} are computed once per node: same input, same weights, so the same tensor for every path).
- `SearchCell.forward`: batched. The cell's inputs are evaluated source by source (H^{l-2}, H^{l-1}, then
  each block once it is complete); one evaluation runs every edge leaving that source, for every path, as
  a handful of large kernels: the paths ride in the batch dimension, the edges and ops in the channel
  dimension (a depthwise conv with a channel multiplier, pointwise convs as one batched matmul). Tensors
  are laid out ``[N, G, S, C, H*W]`` (batch, path, slot = (op, edge), channel): read as ``[N*G, S*C, ...]``
  it is a batch of convolutions with shared weights, read as ``[N, G*S*C, ...]`` batch norm computes its
  statistics per path, per edge and per channel, exactly as the per-path modules do (their BNs are
  affine=False); the op weights ride in BN's affine scale, so weighting costs no extra pass. Pooling (with its
  BN, in training) and skip do not depend on the edge and are computed once per source. A 3x3 kernel is
  zero-embedded in the 5x5 of the same dilation to share one conv (exact). On CPU, pools run channels-last
  and plain depthwise weight gradients are computed as forward convs (both several times faster). In
  training a depthwise-pointwise-BN unit stores only its input and statistics and recomputes the rest in
  backward (`_SeparableBN`): at L=12, F=8, crop 129, batch 2 the step's stored activations shrink from
  1.22 to 0.45 GB.

`fast_plan` checks that the op table has the structure the batched forward knows (ReLU-conv-BN chains,
pools followed by BN, identity, zero); if an op does not, the cell falls back to the reference forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from search_space.operations import OPS, PRIMITIVES, Zero


class MixedOp(nn.Module):
    """sum_k w_k * op_k(x) over PRIMITIVES. The zero op adds nothing and is skipped (exact)."""

    def __init__(self, channels: int, ops: str):
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = OPS[ops][name](channels, 1, False)
            if "pool" in name:  # DARTS: rescale pooled features, which have no weights of their own
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops.append(op)
        self.active = [k for k, name in enumerate(PRIMITIVES) if name != "none"]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = weights[self.active[0]] * self.ops[self.active[0]](x)
        for k in self.active[1:]:
            out = out + weights[k] * self.ops[k](x)
        return out


# --- the structure of the op table, as the batched forward reads it -------------------------------------


@dataclass(frozen=True)
class Unit:
    """One ReLU-conv(s)-BN unit of a conv op: ``dw`` (depthwise then pointwise) or ``full`` (one conv)."""

    kind: str
    kernel: int
    dilation: int
    path: tuple[str, ...]  # module path from the op to the unit


@dataclass(frozen=True)
class ConvOp:
    op: int  # index in PRIMITIVES
    units: tuple[Unit, ...]


@dataclass(frozen=True)
class Plan:
    """How the batched forward evaluates one source: conv ops by stage, pools, skip."""

    convs: tuple[ConvOp, ...]  # sorted by number of units, most first (stage s uses a prefix)
    stage1: tuple[tuple[int, ...], ...]  # groups of indices into convs sharing one stage-1 conv call
    pools: tuple[int, ...]
    skip: int | None
    eps: float
    momentum: float


def _child(module: nn.Module, path: tuple[str, ...]) -> nn.Module:
    for name in path:
        module = getattr(module, name) if not name.isdigit() else module[int(name)]
    return module


def _unit(seq: nn.Module, path: tuple[str, ...]) -> Unit | None:
    mods = list(seq.children()) if isinstance(seq, nn.Sequential) else []
    if len(mods) not in (3, 4) or not isinstance(mods[0], nn.ReLU) or not _plain_bn(mods[-1]):
        return None
    convs = mods[1:-1]
    if not all(isinstance(c, nn.Conv2d) and _same_conv(c) for c in convs):
        return None
    first = convs[0]
    if len(convs) == 2 and first.groups == first.in_channels == first.out_channels and \
            convs[1].kernel_size == (1, 1) and convs[1].groups == 1:
        kind = "dw"
    elif len(convs) == 1 and first.groups == 1:
        kind = "full"
    else:
        return None
    return Unit(kind, first.kernel_size[0], first.dilation[0], path)


def _same_conv(c: nn.Conv2d) -> bool:
    k, d = c.kernel_size[0], c.dilation[0]
    return (c.bias is None and c.stride == (1, 1) and c.kernel_size == (k, k) and c.dilation == (d, d)
            and k % 2 == 1 and c.padding == (d * (k - 1) // 2,) * 2)


def _plain_bn(m: nn.Module) -> bool:
    return (type(m) is nn.BatchNorm2d and not m.affine and m.track_running_stats and m.momentum is not None)


def _conv_op(op: nn.Module, k: int) -> ConvOp | None:
    single = _unit(op, ())
    if single is not None:
        return ConvOp(k, (single,))
    if not isinstance(op, nn.Sequential) or len(op) == 0:
        return None
    units = tuple(_unit(u, (str(i),)) for i, u in enumerate(op))
    return ConvOp(k, units) if all(u is not None for u in units) else None


def fast_plan(mixed: MixedOp) -> Plan | None:
    """The batched evaluation plan for cells of MixedOps like ``mixed``, or None if an op is unknown."""
    convs, pools, skip, bns = [], [], None, []
    for k, op in enumerate(mixed.ops):
        if isinstance(op, Zero):
            continue
        if isinstance(op, nn.Identity):
            skip = k
        elif (isinstance(op, nn.Sequential) and len(op) == 2 and isinstance(op[0], nn.MaxPool2d | nn.AvgPool2d)
              and _plain_bn(op[1])):
            pools.append(k)
            bns.append(op[1])
        elif (conv := _conv_op(op, k)) is not None:
            convs.append(conv)
            bns += [_child(op, u.path)[-1] for u in conv.units]
        else:
            return None
    if not convs or len({(bn.eps, bn.momentum) for bn in bns}) != 1:
        return None
    convs.sort(key=lambda c: -len(c.units))
    if any(u.kind != "dw" or u.dilation != c.units[1].dilation for c in convs for u in c.units[1:]) or \
            len({c.units[1].dilation for c in convs if len(c.units) > 1}) > 1:
        return None  # later stages: one depthwise-pointwise call for every op that has them
    # Stage 1: depthwise ops of one dilation share a call; full convs run one call each. The groups keep
    # the ops with more units first, so every stage's ops are a prefix of the previous stage's slots.
    keys = [(c.units[0].dilation, len(c.units)) if c.units[0].kind == "dw" else ("full", i)
            for i, c in enumerate(convs)]
    stage1 = tuple(tuple(i for i in range(len(convs)) if keys[i] == key) for key in dict.fromkeys(keys))
    order = [i for group in stage1 for i in group]
    if order != sorted(order):
        return None
    return Plan(tuple(convs), stage1, tuple(pools), skip, bns[0].eps, bns[0].momentum)


# --- the conv part of a separable unit, batched ----------------------------------------------------------


def _depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Stride-1 "same" depthwise conv, with a channel multiplier when ``weight`` has more channels than ``x``."""
    pad = dilation * (weight.shape[-1] - 1) // 2
    return F.conv2d(x, weight, padding=pad, dilation=dilation, groups=x.shape[1])


class _SeparableLinear(torch.autograd.Function):
    """Depthwise conv, then a pointwise conv per slot as one batched matmul, with a hand-written backward.

    On CPU the weight gradient of a plain depthwise conv is computed as a depthwise *forward* conv whose kernel
    is the output gradient (a correlation of the padded input with it, summed over the batch): the same
    numbers, 3-4x faster than oneDNN's weight gradient at these shapes. The depthwise output is stored once,
    already laid out by slot for both matmuls.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, dilation: int) -> torch.Tensor:
        zs = _depthwise_slots(x, dw, pw, dilation)
        ctx.save_for_backward(x, dw, pw, zs)
        ctx.dilation = dilation
        return torch.matmul(pw, zs)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor):
        x, dw, pw, zs = ctx.saved_tensors
        needs = [n and _will_run(t) for n, t in zip(ctx.needs_input_grad, (x, dw, pw), strict=False)]
        return *_separable_backward(x, dw, pw, zs, ctx.dilation, grad, needs), None


class _SeparableBN(torch.autograd.Function):
    """`_SeparableLinear` followed by an affine-free batch norm (batch statistics) and a per-channel scale.

    Only the input, the weights and the per-channel statistics are stored: backward recomputes the depthwise
    output (one depthwise conv) and the pointwise output (one batched matmul) from them. The composition of
    autograd ops stores both, so this cuts the activation memory of the whole supernet step by 40% (the ReLU
    output that is this unit's input is stored by the ReLU anyway) for about one more depthwise conv and
    matmul per unit in backward. The batch mean and unbiased variance are written into ``mean_out`` /
    ``var_out``, as ``F.batch_norm(..., momentum=1)`` does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, scale: torch.Tensor | None,
                dilation: int, groups: int, mean_out: torch.Tensor, var_out: torch.Tensor, eps: float
                ) -> torch.Tensor:
        y = torch.matmul(pw, _depthwise_slots(x, dw, pw, dilation))
        out, mean, invstd = torch.native_batch_norm(_bn_view(y, groups), scale, None, mean_out, var_out, True,
                                                    1.0, eps)
        ctx.save_for_backward(x, dw, pw, scale, mean, invstd)
        ctx.dilation, ctx.groups, ctx.eps = dilation, groups, eps
        return out.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, dw, pw, scale, mean, invstd = ctx.saved_tensors
        needs = [n and _will_run(t) for n, t in zip(ctx.needs_input_grad, (x, dw, pw, scale), strict=False)]
        zs = _depthwise_slots(x, dw, pw, ctx.dilation)
        y = torch.matmul(pw, zs)
        grad_y, grad_scale, _ = torch.ops.aten.native_batch_norm_backward(
            _bn_view(grad.contiguous(), ctx.groups), _bn_view(y, ctx.groups), scale, None, None, mean, invstd,
            True, ctx.eps, [any(needs[:3]), scale is not None and needs[3], False])
        del y
        grads = _separable_backward(x, dw, pw, zs, ctx.dilation, grad_y.view_as(grad), needs[:3]) \
            if any(needs[:3]) else (None, None, None)
        return *grads, grad_scale, None, None, None, None, None


def _bn_view(y: torch.Tensor, groups: int) -> torch.Tensor:
    """``[N * G, S, C, H * W]`` as BN's ``[N, G * S * C, H * W]``: statistics per path, slot and channel."""
    return y.reshape(y.shape[0] // groups, -1, y.shape[-1])


def _expand_scale(scale: torch.Tensor | None, groups: int, slots: int, channels: int) -> torch.Tensor | None:
    """A per-slot scale ``[S]`` as BN's per-channel weight ``[G * S * C]`` (contiguous: the CPU BN kernels
    misread a stride-0 weight when G = S = 1)."""
    if scale is None:
        return None
    return scale[None, :, None].expand(groups, slots, channels).contiguous().view(-1)


def _depthwise_slots(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, dilation: int) -> torch.Tensor:
    return _slot_view(_depthwise(x, dw, dilation), x.shape[1], pw.shape[0]).contiguous()


def _separable_backward(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, zs: torch.Tensor, d: int,
                        grad: torch.Tensor, needs: list[bool]) -> tuple:
    """Gradients of ``pw @ slots(depthwise(x, dw))`` for x, dw, pw (None where ``needs`` is False)."""
    cdt, (b, slots, c, _) = zs.dtype, zs.shape
    grad = grad.to(cdt)
    grad_pw = torch.matmul(grad, zs.transpose(-1, -2)).sum(0).to(pw.dtype) if needs[2] else None
    grad_z = torch.matmul(pw.to(cdt).transpose(-1, -2), grad)  # [B, S, C, HW]
    if dw.shape[0] != x.shape[1]:  # multiplier layout: channels (c, slot)
        grad_z = grad_z.transpose(1, 2)
    grad_z = grad_z.reshape(b, slots * c, *x.shape[2:])
    xc, dwc, k = x.to(cdt), dw.to(cdt), dw.shape[-1]
    pad = d * (k - 1) // 2
    plain_cpu = x.device.type == "cpu" and dw.shape[0] == x.shape[1]
    mask = [needs[0], needs[1] and not plain_cpu, False]
    grad_x, grad_dw, _ = torch.ops.aten.convolution_backward(grad_z, xc, dwc, None, [1, 1], [pad, pad], [d, d],
                                                             False, [0, 0], x.shape[1], mask)
    if needs[1] and plain_cpu:
        n, c, h, w = x.shape
        padded = F.pad(xc, (pad, pad, pad, pad)).reshape(1, n * c, h + 2 * pad, w + 2 * pad)
        grad_dw = F.conv2d(padded, grad_z.reshape(n * c, 1, h, w), stride=d, groups=n * c)
        grad_dw = grad_dw.view(n, c, k, k).sum(0).view_as(dw)
    grad_x = grad_x.to(x.dtype) if grad_x is not None else None
    grad_dw = grad_dw.to(dw.dtype) if grad_dw is not None else None
    return grad_x, grad_dw, grad_pw


def _will_run(t: torch.Tensor) -> bool:
    """Whether this backward needs ``t``'s gradient: an arch step (``backward(inputs=[alpha, beta])``) needs no
    weight gradients, which built-in ops skip on their own."""
    return t.grad_fn is None or torch._C._will_engine_execute_node(t.grad_fn)


def _slot_view(z: torch.Tensor, in_channels: int, slots: int) -> torch.Tensor:
    """The depthwise output ``[B, K, H, W]`` as ``[B, S, C, H * W]``: its channels are (c, slot) after a
    multiplier conv (``K > in_channels``), (slot, c) after a plain one."""
    b, k, h, w = z.shape
    if k != in_channels:
        return z.view(b, in_channels, slots, h * w).transpose(1, 2)
    return z.view(b, slots, k // slots, h * w)


def separable_linear(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, dilation: int) -> torch.Tensor:
    """``pw[s] @ depthwise(x, dw)[slot s]`` for every slot: ``[B, S, C_out, H * W]`` (see `_SeparableLinear`)."""
    if torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return _SeparableLinear.apply(x, dw, pw, dilation)
    return torch.matmul(pw, _slot_view(_depthwise(x, dw, dilation), x.shape[1], pw.shape[0]))


# --- the cell -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One conv call of the batched forward: ``ops`` (indices into ``Plan.convs``) at ``stage`` (1-based)."""

    stage: int
    ops: tuple[int, ...]
    kind: str  # "dw": a depthwise call shared by the ops, then one batched pointwise; "full": one conv
    kernel: int
    dilation: int


class SearchCell(nn.Module):
    """B blocks of mixed ops on inputs already preprocessed to ``channels``; output concatenates blocks.

    The running statistics of the mixed ops' BNs live in one stacked buffer, ``bn_stats`` (``[2, rows, C]``,
    mean and variance), of which every BN module's buffers are views: the per-module state dict is as
    before, the reference forward updates them through the modules, the batched forward in one go.
    """

    def __init__(self, channels: int, blocks: int, ops: str):
        super().__init__()
        self.channels, self.blocks = channels, blocks
        self.edges = nn.ModuleList(MixedOp(channels, ops) for b in range(blocks) for _ in range(b + 2))
        self.offsets = [sum(i + 2 for i in range(b)) for b in range(blocks)]
        # Source i (0: H^{l-2}, 1: H^{l-1}, i >= 2: block i - 2) feeds blocks max(0, i - 1) .. B - 1.
        self.sources = [[self.offsets[b] + i for b in range(max(0, i - 1), blocks)] for i in range(blocks + 1)]
        self._order = [e for src in self.sources for e in src]  # edges grouped by source
        self.register_buffer("order", torch.tensor(self._order), persistent=False)
        self._folds: dict = {}
        self.recompute_units = True  # see `SuperNet`
        self.plan = fast_plan(self.edges[0])
        if self.plan is not None:
            self._calls = self._make_calls()
            self._layout()

    # -- structure, computed once --

    def _make_calls(self) -> list[Call]:
        plan, calls = self.plan, []
        for group in plan.stage1:
            unit = plan.convs[group[0]].units[0]
            calls.append(Call(1, group, unit.kind, max(plan.convs[i].units[0].kernel for i in group), unit.dilation))
        for stage in range(2, len(plan.convs[0].units) + 1):
            ops = tuple(i for i, c in enumerate(plan.convs) if len(c.units) >= stage)
            calls.append(Call(stage, ops, "dw", max(plan.convs[i].units[stage - 1].kernel for i in ops),
                              plan.convs[ops[0]].units[stage - 1].dilation))
        return calls

    def _layout(self) -> None:
        """BN rows (per source: each call's slots, then the pools'; slots ordered (op, edge)) and the index
        tensors that gather each call's stacked weights into per-source contiguous blocks."""
        plan, c = self.plan, self.channels
        pos = {e: p for p, e in enumerate(self._order)}
        n = len(self._order)
        bns, self._rows = [], []
        for src in self.sources:
            rows = {}
            for j, call in enumerate(self._calls):
                rows[j] = slice(len(bns), len(bns) + len(call.ops) * len(src))
                bns += [_child(self.edges[e].ops[plan.convs[i].op], plan.convs[i].units[call.stage - 1].path)[-1]
                        for i in call.ops for e in src]
            rows["pool"] = slice(len(bns), len(bns) + len(plan.pools) * len(src))
            bns += [self.edges[e].ops[k][1] for k in plan.pools for e in src]
            self._rows.append(rows)
        self._bn_modules = bns
        self.register_buffer("bn_stats", torch.stack([torch.stack([b.running_mean, b.running_var], 0) for b in bns],
                                                     1).detach().clone(), persistent=False)
        self.register_buffer("bn_count", torch.stack([b.num_batches_tracked for b in bns]).clone(),
                             persistent=False)
        self._bind_stats()
        for j, call in enumerate(self._calls):  # (source, [c,] op, edge) for stage 1; (source, op, edge, c) later
            dw, pw = [], []
            for src in self.sources:
                slots = [(i, pos[e]) for i in range(len(call.ops)) for e in src]
                pw += [i * n + p for i, p in slots]
                if call.stage == 1:
                    dw += [(i * n + p) * c + ch for ch in range(c) for i, p in slots]
                else:
                    dw += [(i * n + p) * c + ch for i, p in slots for ch in range(c)]
            self.register_buffer(f"dw_index{j}", torch.tensor(dw), persistent=False)
            self.register_buffer(f"pw_index{j}", torch.tensor(pw), persistent=False)

    def _bind_stats(self) -> None:
        for r, bn in enumerate(self._bn_modules):
            bn.running_mean, bn.running_var = self.bn_stats[0, r], self.bn_stats[1, r]
            bn.num_batches_tracked = self.bn_count[r]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.plan is not None:  # conversions replace every buffer: make the modules' views again
            self._bind_stats()
            self._folds.clear()
        return self

    # -- forwards --

    def forward_reference(self, s0: torch.Tensor, s1_paths: list[torch.Tensor], weights: torch.Tensor
                          ) -> list[torch.Tensor]:
        """Apply the cell to (s0, s1) for each s1 in ``s1_paths``; ``weights`` is softmax(alpha)."""
        from_s0 = [self.edges[o](s0, weights[o]) for o in self.offsets]
        outs = []
        for s1 in s1_paths:
            states = [s0, s1]
            for b, o in enumerate(self.offsets):
                total = from_s0[b]
                for j in range(1, b + 2):
                    total = total + self.edges[o + j](states[j], weights[o + j])
                states.append(total)
            outs.append(torch.cat(states[2:], dim=1))
        return outs

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor,
                update_stats: bool = True) -> torch.Tensor:
        """sum_g probs[g] * Cell(s0, s1[:, g]): s0 ``[N, C, H, W]``, s1 ``[N, G, C, H, W]`` (G paths).

        ``update_stats=False`` leaves the running statistics alone (a checkpointed recomputation).
        """
        if self.plan is None:
            outs = self.forward_reference(s0, list(s1.unbind(1)), weights)
            return sum(p * out for p, out in zip(probs.unbind(0), outs, strict=True))
        n, g, c, h, w = s1.shape
        s0, s1 = s0.contiguous(), s1.reshape(n * g, c, h, w).contiguous()  # e.g. from channels_last convs
        packed = self._pack(weights)
        fold = self._fold(g) if self.training else None
        tmp = self.bn_stats.new_zeros(2, fold[4]) if fold is not None else None
        acc, blocks, start = None, [], 0
        for i, src in enumerate(self.sources):
            if i == 0:
                x, groups = s0, 1
            elif i == 1:
                x, groups = s1, g
            else:  # block i - 2 is complete: it is the next source
                blocks.append(acc[:, :, 0].contiguous())
                x, groups, acc = blocks[-1].view(n * g, c, h, w), g, acc[:, :, 1:]
            edges = slice(start, start + len(src))
            y = self._source(x, groups, i, packed, edges, tmp, fold[5][i] if fold is not None else None)
            y = y.view(n, groups, len(src), c, h * w)
            acc = y if acc is None else acc + y
            start += len(src)
        blocks.append(acc[:, :, 0])
        out = torch.stack(blocks, dim=2).view(n, g, -1)  # [N, G, B * C * H * W]
        if fold is not None and update_stats:
            self._update_stats(tmp, fold)
        return torch.matmul(probs.to(out.dtype), out).view(n, self.blocks * c, h, w)

    def _pack(self, weights: torch.Tensor) -> dict:
        """This forward's weights, stacked over edges and gathered per call into per-source blocks."""
        edges = [self.edges[e] for e in self._order]
        packed = {"w": weights.index_select(0, self.order).t()}  # [K, edges], source-grouped
        for j, call in enumerate(self._calls):
            convs = [self.plan.convs[i] for i in call.ops]
            units = [_child(m.ops[cv.op], cv.units[call.stage - 1].path) for cv in convs for m in edges]
            if call.kind == "full":
                packed[j] = torch.stack([u[1].weight for u in units])  # [edges, C_out, C_in, k, k]
                continue
            dw = []
            for i, cv in enumerate(convs):
                t = torch.stack([u[1].weight for u in units[i * len(edges):(i + 1) * len(edges)]]).squeeze(2)
                pad = (call.kernel - cv.units[call.stage - 1].kernel) // 2
                dw.append(F.pad(t, (pad,) * 4) if pad else t)
            dw = (torch.cat(dw) if len(dw) > 1 else dw[0]).view(-1, call.kernel * call.kernel)
            pw = torch.stack([u[2].weight for u in units]).flatten(1, 3).view(len(units), self.channels, -1)
            packed[j] = (dw.index_select(0, getattr(self, f"dw_index{j}")),
                         pw.index_select(0, getattr(self, f"pw_index{j}")))
        return packed

    def _fold(self, groups: int) -> tuple:
        """How one training forward's batch statistics fold into the running statistics (cached per G).

        The reference updates each BN once per path, in path order: r <- (1 - m) r + m s_g, so G updates give
        r <- (1 - m)^G r + sum_g m (1 - m)^(G - 1 - g) s_g. Every BN call writes its per-path batch mean and
        unbiased variance (momentum 1) into a chunk of one scratch tensor; `index` gathers them per row.
        """
        like = self.bn_stats
        key = (groups, like.device, like.dtype)
        if key in self._folds:
            return self._folds[key]
        m, c, plan = self.plan.momentum, self.channels, self.plan
        chunks, index, coef, decay, count, offset = [], [], [], [], [], 0
        for i, src in enumerate(self.sources):
            gi, e = (1 if i == 0 else groups), len(src)
            calls = {}
            for key, rows in self._rows[i].items():
                slots = len(plan.pools) if key == "pool" else rows.stop - rows.start
                calls[key] = (offset, offset + gi * slots * c)
                for r in range(rows.stop - rows.start):
                    slot = r // e if key == "pool" else r
                    index.append([offset + (gg * slots + slot) * c + ch if gg < gi else 0
                                  for gg in range(groups) for ch in range(c)])
                    coef.append([m * (1 - m) ** (gi - 1 - gg) if gg < gi else 0.0 for gg in range(groups)])
                    decay.append((1 - m) ** gi)
                    count.append(gi)
                offset += gi * slots * c
            chunks.append(calls)
        index_t = torch.tensor(index, device=like.device).view(-1, groups, c).transpose(0, 1)
        fold = (index_t.reshape(groups, -1), torch.tensor(coef, dtype=like.dtype, device=like.device).t()[..., None],
                torch.tensor(decay, dtype=like.dtype, device=like.device)[:, None],
                torch.tensor(count, device=like.device), offset, chunks)
        self._folds[key] = fold
        return fold

    def _update_stats(self, tmp: torch.Tensor, fold: tuple) -> None:
        index, coef, decay, count = fold[:4]
        with torch.no_grad():
            gathered = tmp[:, index].view(2, index.shape[0], -1, self.channels)  # [2, G, rows, C]
            self.bn_stats.mul_(decay).add_((gathered * coef).sum(1))
            self.bn_count.add_(count)

    def _bn(self, y: torch.Tensor, groups: int, rows: slice, tmp: torch.Tensor | None,
            chunk: tuple[int, int] | None, scale: torch.Tensor | None = None) -> torch.Tensor:
        """BN of ``y`` ``[N * G, S, C, H * W]``, one affine-free BN per slot (rows ``rows`` of ``bn_stats``).

        Training: statistics per path, slot and channel (the view ``[N, G * S * C, H * W]``), written to the
        scratch ``tmp[:, chunk]``. Eval: each slot's own running statistics. ``scale`` (``[S]``, or None for
        ones) multiplies each slot's output: the op weights ride in BN's affine scale instead of costing an
        extra pass over the tensor (a scale of exactly 1 leaves an output unchanged).
        """
        flat = _bn_view(y, groups)
        scale = _expand_scale(scale, groups, y.shape[1], y.shape[2])
        if not self.training:
            st = self.bn_stats[:, rows]
            st = st.unsqueeze(1).expand(2, groups, *st.shape[1:]).reshape(2, -1)
            return F.batch_norm(flat, st[0], st[1], scale, None, False, 0.0, self.plan.eps).view_as(y)
        a, b = chunk
        return F.batch_norm(flat, tmp[0, a:b], tmp[1, a:b], scale, None, True, 1.0, self.plan.eps).view_as(y)

    def _separable(self, x: torch.Tensor, call: Call, packed: tuple, edges: slice, groups: int, rows: slice,
                   tmp: torch.Tensor | None, chunk: tuple[int, int] | None, scale: torch.Tensor | None
                   ) -> torch.Tensor:
        """Depthwise-pointwise-BN of one "dw" call for the edges ``edges``: ``[N * G, S, C, H * W]``."""
        m, c = len(call.ops), self.channels
        dw = packed[0][edges.start * m * c:edges.stop * m * c].view(-1, 1, call.kernel, call.kernel)
        pw = packed[1][edges.start * m:edges.stop * m]
        if self.recompute_units and self.training and torch.is_grad_enabled() and \
                not torch.is_autocast_enabled(x.device.type):
            a, b = chunk
            return _SeparableBN.apply(x, dw, pw, _expand_scale(scale, groups, pw.shape[0], c), call.dilation,
                                      groups, tmp[0, a:b], tmp[1, a:b], self.plan.eps)
        return self._bn(separable_linear(x, dw, pw, call.dilation), groups, rows, tmp, chunk, scale)

    def _source(self, x: torch.Tensor, groups: int, i: int, packed: dict, edges: slice,
                tmp: torch.Tensor | None, chunks: dict | None) -> torch.Tensor:
        """Every edge leaving source ``i``, for every path: ``x`` ``[N * G, C, H, W]`` -> ``[N * G, E, C, H * W]``."""
        plan, ng, c, h, w = self.plan, x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        e, rows = edges.stop - edges.start, self._rows[i]
        wt = packed["w"][:, edges]  # [K, E]
        r = F.relu(x)
        out, prev, cur, stage = None, [], [], 1
        for j, call in enumerate(self._calls):
            if call.stage != stage:
                prev, cur, stage = cur, [], call.stage
            m, pad = len(call.ops), call.dilation * (call.kernel - 1) // 2
            # Ops whose last unit is this stage hold the trailing slots: BN scales them by their op weight.
            done = [plan.convs[k].op for k in call.ops if len(plan.convs[k].units) == stage]
            going = (m - len(done)) * e
            scale = None
            if done:
                scale = wt[done].flatten()
                scale = torch.cat([scale.new_ones(going), scale]) if going else scale
            if call.kind == "full":
                y = F.conv2d(r, packed[j][edges].flatten(0, 1), padding=pad, dilation=call.dilation)
                y = self._bn(y.view(ng, m * e, c, h * w), groups, rows[j], tmp, chunks and chunks[j], scale)
            else:
                if stage == 1:
                    inp = r
                else:  # the ops that continue are the leading slots of the previous stage's calls
                    parts = [t[:, : sum(op in call.ops for op in ops) * e] for ops, t in prev]
                    parts = [t for t in parts if t.shape[1]]
                    inp = F.relu(torch.cat(parts, 1) if len(parts) > 1 else parts[0]).reshape(ng, m * e * c, h, w)
                y = self._separable(inp, call, packed[j], edges, groups, rows[j], tmp, chunks and chunks[j], scale)
            if done:
                term = y[:, going:].view(ng, len(done), e, c, h * w).sum(1) if len(done) > 1 else y[:, going:]
                out = term if out is None else out + term
            if going:
                cur.append((call.ops, y))
        return out + self._parameter_free(x, groups, wt, rows["pool"], tmp, chunks and chunks["pool"])

    def _parameter_free(self, x: torch.Tensor, groups: int, wt: torch.Tensor, rows: slice,
                        tmp: torch.Tensor | None, chunk: tuple[int, int] | None) -> torch.Tensor:
        """The weighted pools (each followed by its BN) and skip: ``[N * G, E, C, H * W]``.

        In training a pool's BN output does not depend on the edge (same input, batch statistics): it is
        computed once and the edges' weights mix pools and skip in one small matmul.
        """
        plan, ng, c, e = self.plan, x.shape[0], x.shape[1], wt.shape[1]
        hw = x.shape[2] * x.shape[3]
        pools, feats, ops = len(plan.pools), [], []
        if pools:  # CPU pooling kernels are 2-4x faster on channels-last tensors, even counting the copies
            xp = x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
            pooled = torch.stack([self.edges[0].ops[k][0](xp) for k in plan.pools], 1).reshape(ng, pools, c, hw)
            if not self.training:  # each edge's BN has its own running statistics
                pooled = pooled.unsqueeze(2).expand(ng, pools, e, c, hw).flatten(1, 2)
                pooled = self._bn(pooled, groups, rows, None, None, wt[list(plan.pools)].flatten())
                out = pooled.view(ng, pools, e, c, hw).sum(1)
                if plan.skip is not None:
                    out = out + x.view(ng, 1, c, hw) * wt[plan.skip].view(e, 1, 1)
                return out
            feats.append(self._bn(pooled, groups, rows, tmp, chunk).view(ng, pools, c * hw))
            ops += plan.pools
        if plan.skip is not None:
            feats.append(x.view(ng, 1, c * hw))
            ops.append(plan.skip)
        if not ops:
            return x.new_zeros(())
        feats = torch.cat(feats, 1) if len(feats) > 1 else feats[0]
        return torch.matmul(wt[ops].t(), feats).view(ng, e, c, hw)
