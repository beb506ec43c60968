"""torchrun / DistributedDataParallel plumbing. One process (no torchrun) needs no process group.

``torchrun --standalone --nproc_per_node=N -m cramming ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` joins the group from them (gloo for CPU tensors, NCCL for CUDA ones). The helpers below
are no-ops when there is one process, so the training loop calls them unconditionally.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist


def env_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def setup() -> tuple[int, int]:
    """Join the process group when torchrun started more than one process; returns (rank, world_size)."""
    rank_, world, local_rank = env_rank()
    if world <= 1 or active():
        return rank(), world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"  # small control tensors stay on the CPU, gradients on the GPU
    else:
        backend = "gloo"
    # Data preparation on rank 0 may take long while the others wait at a barrier.
    minutes = float(os.environ.get("CRAMMING_DIST_TIMEOUT_MIN", 180))
    dist.init_process_group(backend, rank=rank_, world_size=world, timeout=timedelta(minutes=minutes))
    return rank_, world


def teardown(wait_for_others: bool = True) -> None:
    if active():
        if wait_for_others:
            # Leave together: a rank that tears gloo down while another still finishes its last
            # collective can abort ("terminate called without an active exception"). Not after
            # an error, where the other ranks may never arrive.
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU under torchrun (cuda -> cuda:LOCAL_RANK); other devices unchanged."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", env_rank()[2])
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_floats(values: list[float], src: int = 0) -> list[float]:
    """Rank ``src``'s small list of floats (control decisions), through a CPU tensor."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(tensor, src=src)
    return tensor.tolist()


def mean_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if not active():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world_size()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several ranks; ``model`` otherwise."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_context(model: torch.nn.Module, last_microstep: bool):
    """``no_sync()`` on all but the last microstep of an accumulation (DDP, maybe inside torch.compile)."""
    ddp = getattr(model, "_orig_mod", model)
    if last_microstep or not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return ddp.no_sync()


def agreed_run_name() -> str:
    """One timestamp name for all ranks (Hydra's ``${now:}`` resolves per process)."""
    return broadcast_object(time.strftime("%Y-%m-%d_%H-%M-%S"))
