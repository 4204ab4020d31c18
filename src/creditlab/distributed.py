"""Data parallelism across processes started by torchrun.

Rules write their whole update into `.grad`, including updates that never pass
through autograd (feedback weights, perturbation estimates), so averaging
every `.grad` across processes averages the rules' updates. That is what
DistributedDataParallel does for autograd gradients. Its wrapper cannot be
used here because many rules never call the wrapped module's forward, so this
module all-reduces the gradients itself. Each process is weighted by its share
of the batch, so the result equals one process on the combined batch.
"""

import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """Return (rank, world size); (0, 1) when not running under torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return world()


def teardown() -> None:
    """Leave the process group once every process has finished (nothing to do outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(index: torch.Tensor) -> torch.Tensor:
    """Return this process's share of a batch's example indices (every world-th one)."""
    rank, size = world()
    return index[rank::size] if size > 1 else index


def average_gradients(parameters, weight: float) -> None:
    """Replace each `.grad` by the weighted mean over processes: sum_r w_r g_r / sum_r w_r.

    `weight` is this process's share of the batch (its example count).
    Parameters without a gradient contribute zeros.
    """
    if world()[1] == 1:
        return
    parameters = list(parameters)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.detach().flatten() * weight for g in grads]
                     + [torch.tensor([weight], dtype=grads[0].dtype, device=grads[0].device)])
    dist.all_reduce(flat)
    total = flat[-1]
    offset = 0
    for p, g in zip(parameters, grads):
        n = g.numel()
        p.grad = (flat[offset:offset + n] / total).view_as(g).to(g.dtype)
        offset += n


def all_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over processes (identity in a single process)."""
    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if world()[1] == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def is_main() -> bool:
    return world()[0] == 0
