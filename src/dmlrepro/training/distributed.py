"""Multi-process training (torch DDP launched by `torchrun`): who this process is, and the loss
over the global batch.

`torchrun --nproc-per-node N -m dmlrepro train --run ...` starts N processes; each reads its rank
from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). Each process decodes and embeds
its contiguous slice of every global batch (:func:`.images.local_slice`); the embeddings are
gathered in rank order, so every process evaluates the criterion (loss, miner, IAA / SGAR / DA) on
the whole global batch exactly as a single process would, and pairs span the GPUs. Only the
process's own slice carries gradients; DDP averages the gradients over the processes, and the
loss is multiplied by the world size, so the update equals a single-process step on the global
batch (pytorch-metric-learning's DistributedLossWrapper does the same, but takes a bare PML loss
and puts the local slice first, which would give each rank its own order of the random draws of
IAA and SGAR). Rank 0 alone writes checkpoints, outputs and the MLflow record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_environment() -> Processes:
    """This process's place in a torchrun launch (a single process without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Processes(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(procs: Processes, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this process's device."""
    if not procs.distributed:
        return device
    if torch.device(device).type == "cuda":
        device = f"cuda:{procs.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def stop(procs: Processes) -> None:
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_batch(z: torch.Tensor, labels: torch.Tensor, procs: Processes) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's embeddings and labels in rank order; only this rank's slice has gradients."""
    if not procs.distributed:
        return z, labels
    from pytorch_metric_learning.utils.distributed import all_gather  # the other ranks', in rank order

    others_z, others_y = all_gather(z), all_gather(labels)
    split = procs.rank * z.shape[0]  # every slice has the same size (checked at start)
    return (torch.cat([others_z[:split], z, others_z[split:]]),
            torch.cat([others_y[:split], labels, others_y[split:]]))


def unscale_loss_parameters(criterion: torch.nn.Module, procs: Processes) -> None:
    """The loss's own parameters (proxies) are outside DDP: every rank holds the same copy and gets
    the gradient of the whole (world-size-scaled) loss, world_size times the true one. Undo the scale."""
    if procs.distributed:
        for p in criterion.parameters():
            if p.grad is not None:
                p.grad /= procs.world_size


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()
