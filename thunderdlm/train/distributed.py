"""Distributed training: the process group, DDP / FSDP2 set-up, and full-state gathering.

Under ``torchrun`` every rank runs the same trainer; ``train.distributed`` picks DDP (every rank
holds the whole model, gradients all-reduced) or FSDP2 (every parameter sharded on dim 0 over the
ranks). Under FSDP the checkpoint files are the same full, unsharded files a single process writes:
:func:`full_state_dicts` gathers them onto rank 0 and :func:`load_full_state_dicts` shards them
back. Backends: gloo on CPU, nccl on GPU.
"""
from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from thunderdlm.errors import TrainingError


# ---- distributed -------------------------------------------------------------------------------------

def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun a GPU rank owns ``cuda:LOCAL_RANK`` (a bare ``cuda`` would put every rank on
    GPU 0), made the current device so NCCL and FSDP use it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


# ---- FSDP2 (train.distributed=fsdp) --------------------------------------------------------------------

def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards as units of their own: every element holding parameters of every
    ``nn.ModuleList`` (DDiT/GPT ``blocks``, a Hugging Face decoder's ``layers`` / ``h``), parents
    before the blocks nested in them."""
    blocks, seen = [], set()
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                if id(block) not in seen and next(block.parameters(), None) is not None:
                    seen.add(id(block))
                    blocks.append(block)
    return blocks


def shard_model(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """FSDP2 (``fully_shard``) in place: one unit per block, then the root for the parameters left
    (embeddings, final layer, ...). Each parameter becomes a DTensor sharded on dim 0 over the
    ranks and is moved to ``device``; a unit all-gathers its weights just before its forward (and
    backward) and frees them after, and reduce-scatters its gradients averaged over the ranks (as
    DDP averages). Frozen parameters may share a unit with trainable ones: FSDP2 shards per
    parameter and reduces only the gradients that exist."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:
        raise TrainingError(f"train.distributed=fsdp needs torch ≥ 2.6 (FSDP2 fully_shard); this is "
                            f"torch {torch.__version__} ({e}). Use train.distributed=ddp") from None
    mesh = init_device_mesh(device.type, (world,))
    for block in reversed(fsdp_blocks(model)):   # bottom-up, as FSDP2 requires
        fully_shard(block, mesh=mesh)
    # The root keeps its weights gathered from forward to backward, so its pre-backward hook only
    # prefetches: FSDP2's warning that the root returned a view (a process may edit the logits in
    # place, e.g. the masked process's -inf on the mask column, which drops that hook) is harmless
    # here; FSDP gradients equal DDP's in tests/train/test_distributed.py. A block's view still warns.
    warnings.filterwarnings("ignore", message=re.escape(
        f"FSDP2-wrapped module (FSDP{type(model).__name__}) returned a view tensor"))
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The unsharded model state dict and optimiser state dict, on the CPU of rank 0 (the other
    ranks get empty dicts). A collective: every rank calls it. The optimiser's state is keyed by
    torch's integer ids in param-group order, as ``optimizer.state_dict()`` is in one process, so
    the checkpoint files are the same as a single process or DDP writes."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    if not optimizer.state:   # no step yet: DCP would first run a zero step to create the moments
        return model_sd, (optimizer.state_dict() if dist.get_rank() == 0 else {})
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)   # keyed by parameter name
    if not optim_sd:
        return model_sd, {}
    ids: dict[str, int] = {}
    groups = [{**g, "params": [ids.setdefault(name, len(ids)) for name in g["params"]]}
              for g in optim_sd["param_groups"]]
    return model_sd, {"state": {ids[name]: v for name, v in optim_sd["state"].items()},
                      "param_groups": groups}


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer,
                          model_sd: dict[str, torch.Tensor], optim_sd: dict) -> None:
    """The inverse of :func:`full_state_dicts`, on every rank: each keeps its shards of the full
    tensors (integer optimiser ids are mapped back to parameter names through ``optimizer``)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    named = {"state": {order[i]: v for i, v in optim_sd["state"].items()},
             "param_groups": [{**g, "params": [order[i] for i in g["params"]]}
                              for g in optim_sd["param_groups"]]}
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    if named["state"]:   # saved before any step: the fresh optimiser is that state already
        set_optimizer_state_dict(model, optimizer, named, options=opts)


class GatheredOptimizer:
    """An optimiser state dict gathered by :func:`full_state_dicts`, handed to
    ``checkpoint.write_model_files`` (which only calls ``state_dict()``)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


@contextmanager
def fsdp_errors(active: bool):
    """Name the usual FSDP failure: code that reads the network's weights outside its forward
    (where FSDP keeps them as sharded DTensors) mixes DTensors with plain tensors."""
    try:
        yield
    except RuntimeError as e:
        if active and "DTensor" in str(e):
            raise TrainingError(
                "train.distributed=fsdp: the process read the network's weights outside the network's "
                "forward, where FSDP keeps them sharded (DTensor); this process needs "
                f"train.distributed=ddp ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        raise
