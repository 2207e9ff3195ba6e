"""The two steps of the bilevel search, as the worker loop runs them and the benchmark times them.

Auto-DeepLab Sec. 4.2 (first-order DARTS): the network weights w take an SGD step on a trainA batch, then the
architecture parameters alpha and beta take an Adam step on a trainB batch.

- ``weight_step`` runs forward and backward through the DDP-wrapped model, so DDP all-reduces the gradients.
- ``arch_step`` computes only alpha's and beta's gradients: ``torch.autograd.grad`` on the unwrapped network,
  outside DDP's reducer, so no weight gradient is computed, accumulated or all-reduced. The two small
  gradients are then averaged across workers with one explicit all-reduce, which is what DDP would have done
  for them. Every rank therefore takes the same Adam step and the ranks stay identical.

No Ray and no Tune here: the benchmark imports this file in a bare process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class StepOptions:
    """How a step runs: bf16 autocast, channels-last inputs, the weight-gradient norm clip (None: off)."""

    bf16: bool = False
    channels_last: bool = False
    grad_clip: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> StepOptions:
        return cls(bf16=cfg.runtime.bf16, channels_last=cfg.runtime.channels_last, grad_clip=cfg.search.grad_clip)


def autocast(opts: StepOptions, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if opts.bf16 else contextlib.nullcontext()


def inputs(x: torch.Tensor, opts: StepOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if opts.channels_last else x


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_across_workers(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each gradient over the workers, with one all-reduce of their concatenation."""
    if not distributed():
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]


def weight_step(model: nn.Module, net: nn.Module, batch: Any, optimizer: torch.optim.Optimizer,
                criterion: nn.Module, opts: StepOptions, device: torch.device) -> torch.Tensor:
    """Forward/backward through ``model`` (DDP when distributed) and an SGD step of the weights.

    Every gradient is cleared first; the weight gradients are clipped to ``opts.grad_clip`` in norm.
    """
    x, y = batch
    net.zero_grad(set_to_none=True)
    with autocast(opts, device):
        logits = model(inputs(x, opts))
    loss = criterion(logits.float(), y)
    loss.backward()
    if opts.grad_clip:
        nn.utils.clip_grad_norm_(net.weight_parameters(), opts.grad_clip)
    optimizer.step()
    return loss.detach()


def arch_step(net: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, criterion: nn.Module,
              opts: StepOptions, device: torch.device) -> torch.Tensor:
    """Forward on the unwrapped ``net``, gradients of alpha and beta only, averaged over workers, an Adam step.

    Every weight gradient is left unset (None), so nothing from the weight step lingers either.
    """
    x, y = batch
    params = list(net.arch_parameters())
    net.zero_grad(set_to_none=True)
    with autocast(opts, device):
        logits = net(inputs(x, opts))
    loss = criterion(logits.float(), y)
    grads = average_across_workers(list(torch.autograd.grad(loss, params)))
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    return loss.detach()
