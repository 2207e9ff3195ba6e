"""The searchable cell, batched: `SearchCell` is `cell_search.Cell` with a fast forward, the one SuperNet runs.

It computes the plain cell's numbers on the same weights and BN statistics (tests/test_supernet_equivalence.py).
The cell's inputs are evaluated source by source (H^{l-2}, H^{l-1}, then each block once it is complete); one
evaluation runs every edge leaving that source, for every path, as a handful of large kernels: the paths ride
in the batch dimension, the edges and ops in the channel dimension (a depthwise conv with a channel multiplier,
pointwise convs as one batched matmul). Tensors are laid out ``[N, G, S, C, H*W]`` (batch, path, slot = (op,
edge), channel): read as ``[N*G, S*C, ...]`` it is a batch of convolutions with shared weights, read as
``[N, G*S*C, ...]`` batch norm computes its statistics per path, per edge and per channel, exactly as the
per-path modules do (their BNs are affine=False); the op weights ride in BN's affine scale, so weighting costs
no extra pass. Pooling (with its BN, in training) and skip do not depend on the edge and are computed once per
source. A 3x3 kernel is zero-embedded in the 5x5 of the same dilation to share one conv (exact). On CPU, pools
run channels-last. The separable units' convs and their recomputation in backward are in `cell_autograd`; at
L=12, F=8, crop 129, batch 2 the recomputation shrinks the step's stored activations from 1.22 to 0.45 GB.

`cell_plan.fast_plan` reads the op table's structure; where it has none the batched forward knows, the cell
runs the plain forward of `cell_search.Cell`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from search_space.cell_autograd import bn_view, expand_scale, separable_bn, separable_linear
from search_space.cell_plan import Call, Plan, fast_plan, make_calls, submodule
from search_space.cell_search import Cell


class Slots(NamedTuple):
    """One source's ranges (rows of ``bn_stats``, or columns of the statistics scratch): one per conv call,
    whose slots are ordered (op, edge), and one for the pools."""

    calls: tuple[slice, ...]
    pool: slice


class Fold(NamedTuple):
    """How one training forward's per-path batch statistics fold into the running statistics (`build_fold`)."""

    index: torch.Tensor  # [G, rows * C]: where path g's statistics of each row lie in the scratch
    coef: torch.Tensor  # [G, rows, 1]: path g's weight in its row's update
    decay: torch.Tensor  # [rows, 1]: the old running statistics' weight
    count: torch.Tensor  # [rows]: updates per row (1 for the edges from H^{l-2}, else G)
    width: int  # columns of the scratch
    chunks: tuple[Slots, ...]  # per source: the scratch columns each BN call writes


class Separable(NamedTuple):
    """The stacked weights of one "dw" call, source-grouped: depthwise ``[slots * C, k * k]``, pointwise
    ``[slots, C_out, C_in]``."""

    dw: torch.Tensor
    pw: torch.Tensor


class Packed(NamedTuple):
    """One forward's weights, stacked over edges and gathered per call into per-source blocks (`_pack`)."""

    op_weights: torch.Tensor  # [K, edges]: softmax(alpha) transposed, edges grouped by source
    calls: tuple[torch.Tensor | Separable, ...]  # per call: a "full" call's [edges, C, C, k, k], or Separable


def build_fold(plan: Plan, rows: list[Slots], sources: list[list[int]], channels: int, groups: int,
               like: torch.Tensor) -> Fold:
    """The `Fold` of a training forward with ``groups`` paths, its tensors on ``like``'s device and dtype.

    The reference updates each BN once per path, in path order: r <- (1 - m) r + m s_g, so G updates give
    r <- (1 - m)^G r + sum_g m (1 - m)^(G - 1 - g) s_g. Every BN call writes its per-path batch mean and
    unbiased variance (momentum 1) into a chunk of one scratch tensor; ``index`` gathers them per row.
    """
    m, c, pools = plan.momentum, channels, len(plan.pools)
    chunks, index, coef, decay, count, offset = [], [], [], [], [], 0
    for i, src in enumerate(sources):
        gi, e = (1 if i == 0 else groups), len(src)
        spans = []
        for span, pool in [(r, False) for r in rows[i].calls] + [(rows[i].pool, True)]:
            slots = pools if pool else span.stop - span.start
            spans.append(slice(offset, offset + gi * slots * c))
            for r in range(span.stop - span.start):
                slot = r // e if pool else r  # a pool's BN runs once per source: its edges share its statistics
                index.append([offset + (gg * slots + slot) * c + ch if gg < gi else 0
                              for gg in range(groups) for ch in range(c)])
                coef.append([m * (1 - m) ** (gi - 1 - gg) if gg < gi else 0.0 for gg in range(groups)])
                decay.append((1 - m) ** gi)
                count.append(gi)
            offset += gi * slots * c
        chunks.append(Slots(tuple(spans[:-1]), spans[-1]))
    index_t = torch.tensor(index, device=like.device).view(-1, groups, c).transpose(0, 1)
    return Fold(index_t.reshape(groups, -1), torch.tensor(coef, dtype=like.dtype, device=like.device).t()[..., None],
                torch.tensor(decay, dtype=like.dtype, device=like.device)[:, None],
                torch.tensor(count, device=like.device), offset, tuple(chunks))


class SearchCell(Cell):
    """`Cell` with the batched forward; `forward_paths` stays the plain per-path forward.

    The running statistics of the mixed ops' BNs live in one stacked buffer, ``bn_stats`` (``[2, rows, C]``,
    mean and variance), of which every BN module's buffers are views: the per-module state dict is the plain
    cell's, the plain forward updates the statistics through the modules, the batched forward in one go.
    """

    def __init__(self, channels: int, blocks: int, ops: str):
        super().__init__(channels, blocks, ops)
        # Source i (0: H^{l-2}, 1: H^{l-1}, i >= 2: block i - 2) feeds blocks max(0, i - 1) .. B - 1.
        self.sources = [[self.offsets[b] + i for b in range(max(0, i - 1), blocks)] for i in range(blocks + 1)]
        self._order = [e for src in self.sources for e in src]  # edges grouped by source
        self.register_buffer("order", torch.tensor(self._order), persistent=False)
        self._folds: dict[tuple, Fold] = {}
        self.recompute_units = True  # see `SuperNet`
        self.plan = fast_plan(self.edges[0])
        if self.plan is not None:
            self._calls = make_calls(self.plan)
            self._layout()

    # -- structure, computed once --

    def _layout(self) -> None:
        """BN rows (per source: each call's slots, then the pools'; slots ordered (op, edge)) as one stacked
        buffer of which the BN modules' buffers are views."""
        plan = self.plan
        bns, self._rows = [], []
        for src in self.sources:
            calls = []
            for call in self._calls:
                calls.append(slice(len(bns), len(bns) + len(call.ops) * len(src)))
                bns += [submodule(self.edges[e].ops[plan.convs[i].op], plan.convs[i].units[call.stage - 1].path)[-1]
                        for i in call.ops for e in src]
            pool = slice(len(bns), len(bns) + len(plan.pools) * len(src))
            bns += [self.edges[e].ops[k][1] for k in plan.pools for e in src]
            self._rows.append(Slots(tuple(calls), pool))
        self._bn_modules = bns
        self.register_buffer("bn_stats", torch.stack([torch.stack([b.running_mean, b.running_var], 0) for b in bns],
                                                     1).detach().clone(), persistent=False)
        self.register_buffer("bn_count", torch.stack([b.num_batches_tracked for b in bns]).clone(),
                             persistent=False)
        self._bind_stats()
        self._register_gathers()

    def _register_gathers(self) -> None:
        """Index tensors that gather each call's stacked weights into per-source contiguous blocks."""
        c, n = self.channels, len(self._order)
        pos = {e: p for p, e in enumerate(self._order)}
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

    def _fold(self, groups: int) -> Fold:
        """`build_fold` for ``groups`` paths, cached per (G, device, dtype)."""
        key = (groups, self.bn_stats.device, self.bn_stats.dtype)
        if key not in self._folds:
            self._folds[key] = build_fold(self.plan, self._rows, self.sources, self.channels, groups, self.bn_stats)
        return self._folds[key]

    # -- forward --

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor,
                update_stats: bool = True) -> torch.Tensor:
        """`Cell.forward`, batched; the plain forward where the op table has no plan.

        ``update_stats=False`` leaves the running statistics alone (a checkpointed recomputation).
        """
        if self.plan is None:
            return super().forward(s0, s1, weights, probs, update_stats)
        n, g, c, h, w = s1.shape
        s0, s1 = s0.contiguous(), s1.reshape(n * g, c, h, w).contiguous()  # e.g. from channels_last convs
        packed = self._pack(weights)
        fold = self._fold(g) if self.training else None
        tmp = self.bn_stats.new_zeros(2, fold.width) if fold is not None else None
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
            y = self._source(x, groups, i, packed, edges, tmp, fold.chunks[i] if fold is not None else None)
            y = y.view(n, groups, len(src), c, h * w)
            acc = y if acc is None else acc + y
            start += len(src)
        blocks.append(acc[:, :, 0])
        out = torch.stack(blocks, dim=2).view(n, g, -1)  # [N, G, B * C * H * W]
        if fold is not None and update_stats:
            self._update_stats(tmp, fold)
        return torch.matmul(probs.to(out.dtype), out).view(n, self.blocks * c, h, w)

    def _pack(self, weights: torch.Tensor) -> Packed:
        """This forward's weights, stacked over edges and gathered per call into per-source blocks."""
        edges = [self.edges[e] for e in self._order]
        calls = []
        for j, call in enumerate(self._calls):
            convs = [self.plan.convs[i] for i in call.ops]
            units = [submodule(m.ops[cv.op], cv.units[call.stage - 1].path) for cv in convs for m in edges]
            if call.kind == "full":
                calls.append(torch.stack([u[1].weight for u in units]))  # [edges, C_out, C_in, k, k]
                continue
            dw = []
            for i, cv in enumerate(convs):
                t = torch.stack([u[1].weight for u in units[i * len(edges):(i + 1) * len(edges)]]).squeeze(2)
                pad = (call.kernel - cv.units[call.stage - 1].kernel) // 2
                dw.append(F.pad(t, (pad,) * 4) if pad else t)
            dw = (torch.cat(dw) if len(dw) > 1 else dw[0]).view(-1, call.kernel * call.kernel)
            pw = torch.stack([u[2].weight for u in units]).flatten(1, 3).view(len(units), self.channels, -1)
            calls.append(Separable(dw.index_select(0, getattr(self, f"dw_index{j}")),
                                   pw.index_select(0, getattr(self, f"pw_index{j}"))))
        return Packed(weights.index_select(0, self.order).t(), tuple(calls))

    def _update_stats(self, tmp: torch.Tensor, fold: Fold) -> None:
        with torch.no_grad():
            gathered = tmp[:, fold.index].view(2, fold.index.shape[0], -1, self.channels)  # [2, G, rows, C]
            self.bn_stats.mul_(fold.decay).add_((gathered * fold.coef).sum(1))
            self.bn_count.add_(fold.count)

    def _bn(self, y: torch.Tensor, groups: int, rows: slice, tmp: torch.Tensor | None, chunk: slice | None,
            scale: torch.Tensor | None = None) -> torch.Tensor:
        """BN of ``y`` ``[N * G, S, C, H * W]``, one affine-free BN per slot (rows ``rows`` of ``bn_stats``).

        Training: statistics per path, slot and channel (the view ``[N, G * S * C, H * W]``), written to the
        scratch ``tmp[:, chunk]``. Eval: each slot's own running statistics. ``scale`` (``[S]``, or None for
        ones) multiplies each slot's output: the op weights ride in BN's affine scale instead of costing an
        extra pass over the tensor (a scale of exactly 1 leaves an output unchanged).
        """
        flat = bn_view(y, groups)
        scale = expand_scale(scale, groups, y.shape[1], y.shape[2])
        if not self.training:
            st = self.bn_stats[:, rows]
            st = st.unsqueeze(1).expand(2, groups, *st.shape[1:]).reshape(2, -1)
            return F.batch_norm(flat, st[0], st[1], scale, None, False, 0.0, self.plan.eps).view_as(y)
        return F.batch_norm(flat, tmp[0, chunk], tmp[1, chunk], scale, None, True, 1.0, self.plan.eps).view_as(y)

    def _separable(self, x: torch.Tensor, call: Call, weights: Separable, edges: slice, groups: int, rows: slice,
                   tmp: torch.Tensor | None, chunk: slice | None, scale: torch.Tensor | None) -> torch.Tensor:
        """Depthwise-pointwise-BN of one "dw" call for the edges ``edges``: ``[N * G, S, C, H * W]``."""
        m, c = len(call.ops), self.channels
        dw = weights.dw[edges.start * m * c:edges.stop * m * c].view(-1, 1, call.kernel, call.kernel)
        pw = weights.pw[edges.start * m:edges.stop * m]
        if self.recompute_units and self.training and torch.is_grad_enabled() and \
                not torch.is_autocast_enabled(x.device.type):
            return separable_bn(x, dw, pw, expand_scale(scale, groups, pw.shape[0], c), call.dilation, groups,
                                tmp[0, chunk], tmp[1, chunk], self.plan.eps)
        return self._bn(separable_linear(x, dw, pw, call.dilation), groups, rows, tmp, chunk, scale)

    def _source(self, x: torch.Tensor, groups: int, i: int, packed: Packed, edges: slice,
                tmp: torch.Tensor | None, chunks: Slots | None) -> torch.Tensor:
        """Every edge leaving source ``i``, for every path: ``x`` ``[N * G, C, H, W]`` -> ``[N * G, E, C, H * W]``."""
        plan, ng, c, h, w = self.plan, x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        e, rows = edges.stop - edges.start, self._rows[i]
        wt = packed.op_weights[:, edges]  # [K, E]
        r = F.relu(x)
        out, prev, cur, stage = None, [], [], 1
        for j, call in enumerate(self._calls):
            if call.stage != stage:
                prev, cur, stage = cur, [], call.stage
            m, pad = len(call.ops), call.dilation * (call.kernel - 1) // 2
            chunk = chunks.calls[j] if chunks is not None else None
            # Ops whose last unit is this stage hold the trailing slots: BN scales them by their op weight.
            done = [plan.convs[k].op for k in call.ops if len(plan.convs[k].units) == stage]
            going = (m - len(done)) * e
            scale = None
            if done:
                scale = wt[done].flatten()
                scale = torch.cat([scale.new_ones(going), scale]) if going else scale
            if call.kind == "full":
                y = F.conv2d(r, packed.calls[j][edges].flatten(0, 1), padding=pad, dilation=call.dilation)
                y = self._bn(y.view(ng, m * e, c, h * w), groups, rows.calls[j], tmp, chunk, scale)
            else:
                if stage == 1:
                    inp = r
                else:  # the ops that continue are the leading slots of the previous stage's calls
                    parts = [t[:, : sum(op in call.ops for op in ops) * e] for ops, t in prev]
                    parts = [t for t in parts if t.shape[1]]
                    inp = F.relu(torch.cat(parts, 1) if len(parts) > 1 else parts[0]).reshape(ng, m * e * c, h, w)
                y = self._separable(inp, call, packed.calls[j], edges, groups, rows.calls[j], tmp, chunk, scale)
            if done:
                term = y[:, going:].view(ng, len(done), e, c, h * w).sum(1) if len(done) > 1 else y[:, going:]
                out = term if out is None else out + term
            if going:
                cur.append((call.ops, y))
        pool_chunk = chunks.pool if chunks is not None else None
        return out + self._parameter_free(x, groups, wt, rows.pool, tmp, pool_chunk)

    def _parameter_free(self, x: torch.Tensor, groups: int, wt: torch.Tensor, rows: slice,
                        tmp: torch.Tensor | None, chunk: slice | None) -> torch.Tensor:
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
