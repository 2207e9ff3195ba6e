"""The search's two steps (orchestrator.train.steps), without Ray: the arch step computes alpha/beta gradients only,
equals the full backward it replaces, and two DDP workers (gloo, torch.multiprocessing) stay identical."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from orchestrator.train.steps import StepOptions, arch_step, weight_step
from search_space import SuperNet

CROP, CLASSES = 32, 3


def tiny(seed: int = 0) -> SuperNet:
    torch.manual_seed(seed)
    return SuperNet(CLASSES, layers=2, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, CROP, CROP, generator=g), torch.randint(0, CLASSES, (2, CROP, CROP), generator=g)


def optimizers(net: SuperNet) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    return (torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9),
            torch.optim.Adam(net.arch_parameters(), lr=0.05, weight_decay=1e-3))


def test_arch_step_leaves_weight_gradients_unset_and_weights_unchanged():
    torch.set_num_threads(1)
    net, criterion, opts = tiny(), nn.CrossEntropyLoss(), StepOptions(grad_clip=5.0)
    w_opt, a_opt = optimizers(net)
    weight_step(net, net, batch(1), w_opt, criterion, opts, torch.device("cpu"))
    assert all(p.grad is not None for p in net.weight_parameters())  # the weight step left its gradients
    before = [p.detach().clone() for p in net.weight_parameters()]
    alpha = net.alpha.detach().clone()
    arch_step(net, batch(2), a_opt, criterion, opts, torch.device("cpu"))
    assert all(p.grad is None for p in net.weight_parameters())
    assert all(p.grad is not None for p in net.arch_parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, net.weight_parameters(), strict=True))
    assert not torch.equal(alpha, net.alpha)


def test_arch_step_equals_the_full_backward_it_replaces():
    """Same alpha/beta after the step as a plain loss.backward() over every parameter followed by Adam."""
    torch.set_num_threads(1)
    criterion = nn.CrossEntropyLoss()
    fast, plain = tiny(), tiny()
    fast_opt, plain_opt = optimizers(fast)[1], optimizers(plain)[1]
    for seed in (3, 4):
        arch_step(fast, batch(seed), fast_opt, criterion, StepOptions(), torch.device("cpu"))
        plain.zero_grad(set_to_none=True)
        x, y = batch(seed)
        criterion(plain(x), y).backward()
        plain_opt.step()
    for a, b in zip(fast.arch_parameters(), plain.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """Three alternations on rank-dependent batches; saves alpha, beta, a weight checksum and a gradient check."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = tiny()
    model = DistributedDataParallel(net)
    w_opt, a_opt = optimizers(net)
    criterion, opts, cpu = nn.CrossEntropyLoss(), StepOptions(grad_clip=5.0), torch.device("cpu")
    grad_error = 0.0
    for it in range(3):
        weight_step(model, net, batch(100 * it + rank), w_opt, criterion, opts, cpu)
        b = batch(100 * it + 50 + rank)
        local = torch.autograd.grad(criterion(net(b[0]), b[1]), net.arch_parameters())
        everyone = [torch.cat([g.flatten() for g in local])]
        gathered = [torch.zeros_like(everyone[0]) for _ in range(world)]
        dist.all_gather(gathered, everyone[0])
        arch_step(net, b, a_opt, criterion, opts, cpu)
        got = torch.cat([p.grad.flatten() for p in net.arch_parameters()])
        grad_error = max(grad_error, float((got - torch.stack(gathered).mean(0)).abs().max()))
        assert all(p.grad is None for p in net.weight_parameters())
    torch.save({"alpha": net.alpha.detach(), "beta": net.beta.detach(), "grad_error": grad_error,
                "weights": torch.stack([p.detach().double().sum() for p in net.weight_parameters()])},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_workers_stay_identical(tmp_path):
    """Arch gradients are the workers' mean (one explicit all-reduce) and both ranks end bit-identical."""
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("alpha", "beta", "weights"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0["grad_error"] < 1e-6 and r1["grad_error"] < 1e-6
    assert not torch.equal(r0["alpha"], tiny().alpha.detach())  # alpha did move


def test_a_standalone_retrain_reports_every_epoch_to_its_listener(tiny_settings, tmp_path, capsys):
    """The retrain loop run standalone (how an in-process Tune trial runs a short retrain): no ray.train API, one
    worker, each epoch to the report listener and to ``epochs/``, no checkpoint."""
    import json
    import random

    from orchestrator.config import config_from_dict, config_to_dict, with_overrides
    from orchestrator.train.retrain_loop import retrain_fn_per_worker
    from orchestrator.train.worker import report_listener
    from search_space import sample_genotype

    cfg = with_overrides(config_from_dict(tiny_settings), ["retrain.epochs=2", "retrain.crop_size=32",
                                                           "retrain.batch_size=2", "retrain.filter_multiplier=2",
                                                           "runtime.progress_seconds=0.000001"])
    genotype = sample_genotype(cfg.search_space.layers, cfg.search_space.blocks, random.Random(0))
    seen: list[dict] = []
    with report_listener(seen.append):
        retrain_fn_per_worker({"config": config_to_dict(cfg), "genotype": genotype.to_dict(),
                               "run_dir": str(tmp_path / "run"), "standalone": True})
    assert [m["epoch"] for m in seen] == [1, 2]
    for m in seen:  # mIoU: the mean over the classes seen in labels or predictions (the others' IoU is None)
        present = [iou for iou in m["per_class_iou"] if iou is not None]
        assert len(m["per_class_iou"]) == 8 and m["val_miou"] == pytest.approx(sum(present) / len(present))
    records = [json.loads(r.read_text()) for r in sorted((tmp_path / "run" / "epochs").glob("*.json"))]
    assert [(r["epoch"], r["val_miou"]) for r in records] == [(m["epoch"], m["val_miou"]) for m in seen]
    assert not list((tmp_path / "run").glob("checkpoint_*"))
    out = capsys.readouterr().out  # progress lines inside each epoch, tagged with the run's name
    assert "[run] epoch 1/2 step 1/8 " in out and "[run] epoch 2/2 step 7/8 " in out and " img/s eta " in out
    with report_listener(seen.append):
        pass
    retrain_fn_per_worker({"config": config_to_dict(cfg), "genotype": genotype.to_dict(), "run_dir": None,
                           "standalone": True})
    assert len(seen) == 2  # a listener hears only the reports inside its block
