"""The batched cell's separable unit as custom autograd functions: depthwise conv, per-slot pointwise, BN.

A unit of the batched cell (`cell_batched.SearchCell`) runs the depthwise-pointwise convs of many (op, edge)
slots at once: one depthwise conv with a channel multiplier, then each slot's pointwise conv as one batched
matmul, ``[B, S, C_out, H * W]``. Two hand-written backwards make it cheap:

- `separable_linear` (`_SeparableLinear`): on CPU, the weight gradient of a plain depthwise conv is computed
  as a depthwise *forward* conv (3-4x faster than oneDNN's weight gradient at these shapes), and a backward
  that needs no weight gradients (the arch step) skips them, as built-in ops do.
- `separable_bn` (`_SeparableBN`): the unit followed by its affine-free BN; it stores only the input, the
  weights and the BN statistics, and recomputes the depthwise and pointwise outputs in backward (a 40%
  smaller activation memory for the supernet step, for one more depthwise conv and matmul per unit).

Both use PyTorch's ATen ops (``native_batch_norm``, ``convolution_backward``) for the gradients the built-in
autograd would compute, so the numbers are those of the plain composition.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def separable_linear(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, dilation: int) -> torch.Tensor:
    """``pw[s] @ depthwise(x, dw)[slot s]`` for every slot: ``[B, S, C_out, H * W]`` (see `_SeparableLinear`)."""
    if torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return _SeparableLinear.apply(x, dw, pw, dilation)
    return torch.matmul(pw, _slot_view(_depthwise(x, dw, dilation), x.shape[1], pw.shape[0]))


def separable_bn(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, scale: torch.Tensor | None, dilation: int,
                 groups: int, mean_out: torch.Tensor, var_out: torch.Tensor, eps: float) -> torch.Tensor:
    """BN (batch statistics, per-channel ``scale``) of `separable_linear`, recomputed in backward (`_SeparableBN`).

    The batch mean and unbiased variance are written into ``mean_out`` / ``var_out``."""
    return _SeparableBN.apply(x, dw, pw, scale, dilation, groups, mean_out, var_out, eps)


def bn_view(y: torch.Tensor, groups: int) -> torch.Tensor:
    """``[N * G, S, C, H * W]`` as BN's ``[N, G * S * C, H * W]``: statistics per path, slot and channel."""
    return y.reshape(y.shape[0] // groups, -1, y.shape[-1])


def expand_scale(scale: torch.Tensor | None, groups: int, slots: int, channels: int) -> torch.Tensor | None:
    """A per-slot scale ``[S]`` as BN's per-channel weight ``[G * S * C]`` (contiguous: the CPU BN kernels
    misread a stride-0 weight when G = S = 1)."""
    if scale is None:
        return None
    return scale[None, :, None].expand(groups, slots, channels).contiguous().view(-1)


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
        out, mean, invstd = torch.native_batch_norm(bn_view(y, groups), scale, None, mean_out, var_out, True,
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
            bn_view(grad.contiguous(), ctx.groups), bn_view(y, ctx.groups), scale, None, None, mean, invstd,
            True, ctx.eps, [any(needs[:3]), scale is not None and needs[3], False])
        del y
        grads = _separable_backward(x, dw, pw, zs, ctx.dilation, grad_y.view_as(grad), needs[:3]) \
            if any(needs[:3]) else (None, None, None)
        return *grads, grad_scale, None, None, None, None, None


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


def _depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Stride-1 "same" depthwise conv, with a channel multiplier when ``weight`` has more channels than ``x``."""
    pad = dilation * (weight.shape[-1] - 1) // 2
    return F.conv2d(x, weight, padding=pad, dilation=dilation, groups=x.shape[1])


def _depthwise_slots(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, dilation: int) -> torch.Tensor:
    return _slot_view(_depthwise(x, dw, dilation), x.shape[1], pw.shape[0]).contiguous()


def _slot_view(z: torch.Tensor, in_channels: int, slots: int) -> torch.Tensor:
    """The depthwise output ``[B, K, H, W]`` as ``[B, S, C, H * W]``: its channels are (c, slot) after a
    multiplier conv (``K > in_channels``), (slot, c) after a plain one."""
    b, k, h, w = z.shape
    if k != in_channels:
        return z.view(b, in_channels, slots, h * w).transpose(1, 2)
    return z.view(b, slots, k // slots, h * w)


def _will_run(t: torch.Tensor) -> bool:
    """Whether this backward needs ``t``'s gradient: an arch step (``backward(inputs=[alpha, beta])``) needs no
    weight gradients, which built-in ops skip on their own."""
    return t.grad_fn is None or torch._C._will_engine_execute_node(t.grad_fn)
