"""DDP's update equals a single process's on the same global batch: two gloo processes, each with
half of the batch, gather the embeddings (training.distributed.gather_batch), evaluate the
criterion on the whole batch and back-propagate through DDP; their averaged gradients must equal
the gradient one process computes on the whole batch (the reference, computed here directly)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmlrepro.methods import build_criterion
from dmlrepro.training.distributed import Processes, gather_batch, unscale_loss_parameters
from dmlrepro.training.images import local_slice

METHODS = {
    "multi_similarity": {"loss": "multi_similarity", "loss_args": {"alpha": 2.0, "beta": 20.0, "base": 0.5},
                         "miner": "multi_similarity", "miner_args": {"epsilon": 0.1}},
    "contrastive": {"loss": "contrastive", "loss_args": {"pos_margin": 0.0, "neg_margin": 0.7}},
    "proxy_anchor": {"loss": "proxy_anchor", "loss_args": {"alpha": 32.0, "margin": 0.2}},
}


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 10, generator=g)
    y = torch.arange(4).repeat_interleave(4)  # 4 classes x 4, as the m-per-class sampler groups them
    return x, y


def _model_and_criterion(method: str):
    torch.manual_seed(0)
    net = torch.nn.Linear(10, 6)
    criterion = build_criterion(METHODS[method], num_classes=4, embedding_dim=6, name=method)
    return net, criterion


def _gradients(net, criterion) -> dict:
    grads = {f"net.{k}": p.grad.clone() for k, p in net.named_parameters()}
    grads.update({f"loss.{k}": p.grad.clone() for k, p in criterion.named_parameters() if p.grad is not None})
    return grads


def _worker(rank: int, world: int, init_file: str, method: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        procs = Processes(rank, world, rank)
        net, criterion = _model_and_criterion(method)
        model = torch.nn.parallel.DistributedDataParallel(net)
        x, y = _batch()
        mine = local_slice(list(range(len(y))), rank, world)
        all_z, all_y = gather_batch(model(x[mine]), y[mine], procs)
        loss = criterion(all_z, all_y)
        (loss * world).backward()
        unscale_loss_parameters(criterion, procs)  # proxies are outside DDP
        torch.save({"loss": loss.item(), "grads": _gradients(net, criterion)}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def _distributed(tmp_path, method: str) -> list[dict]:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), method, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"{r}.pt") for r in range(2)]


def test_two_processes_give_the_single_process_gradient_of_the_global_batch(tmp_path):
    for method in METHODS:
        (tmp_path / method).mkdir()
        net, criterion = _model_and_criterion(method)
        x, y = _batch()
        loss = criterion(net(x), y)
        loss.backward()
        reference = _gradients(net, criterion)
        for rank, result in enumerate(_distributed(tmp_path / method, method)):
            assert abs(result["loss"] - loss.item()) < 1e-5, (method, rank)
            assert result["grads"].keys() == reference.keys()
            for key, grad in reference.items():
                assert grad.abs().max() > 0
                assert torch.allclose(result["grads"][key], grad, rtol=1e-4, atol=1e-6), (method, rank, key)


def test_local_slices_are_contiguous_and_cover_the_batch():
    items = list(range(12))
    assert local_slice(items, 0, 2) == [0, 1, 2, 3, 4, 5] and local_slice(items, 1, 2) == [6, 7, 8, 9, 10, 11]
    assert [x for r in range(3) for x in local_slice(items, r, 3)] == items
