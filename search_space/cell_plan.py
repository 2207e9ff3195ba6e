"""What the batched cell knows about the op table: `fast_plan` reads a `MixedOp`'s modules into a `Plan`.

The batched forward (`cell_batched.SearchCell`) does not call the ops' modules: it runs their convs and BNs as
a few large kernels over every edge, so it must know each op's structure. `fast_plan` checks that the op table
has a structure it knows (ReLU-conv(s)-BN units, pools followed by an affine-free BN, identity, zero) and
describes it; where an op does not fit, it returns None and the cell falls back to the plain reference forward
(`cell_search.Cell.forward`). `make_calls` groups the conv ops into the conv calls of one source's evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from search_space.operations import Zero


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


@dataclass(frozen=True)
class Call:
    """One conv call of the batched forward: ``ops`` (indices into ``Plan.convs``) at ``stage`` (1-based)."""

    stage: int
    ops: tuple[int, ...]
    kind: str  # "dw": a depthwise call shared by the ops, then one batched pointwise; "full": one conv
    kernel: int
    dilation: int


def submodule(module: nn.Module, path: tuple[str, ...]) -> nn.Module:
    """The module at ``path`` (names and sequence indices) below ``module``."""
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


def fast_plan(mixed: nn.Module) -> Plan | None:
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
            bns += [submodule(op, u.path)[-1] for u in conv.units]
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


def make_calls(plan: Plan) -> list[Call]:
    """The conv calls that evaluate one source: stage 1's groups, then one depthwise call per later stage."""
    calls = []
    for group in plan.stage1:
        unit = plan.convs[group[0]].units[0]
        calls.append(Call(1, group, unit.kind, max(plan.convs[i].units[0].kernel for i in group), unit.dilation))
    for stage in range(2, len(plan.convs[0].units) + 1):
        ops = tuple(i for i, c in enumerate(plan.convs) if len(c.units) >= stage)
        calls.append(Call(stage, ops, "dw", max(plan.convs[i].units[stage - 1].kernel for i in ops),
                          plan.convs[ops[0]].units[stage - 1].dilation))
    return calls
