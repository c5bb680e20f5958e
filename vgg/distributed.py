"""Process-group helpers for DDP on one or many machines, started by ``torchrun`` or directly
by SLURM's ``srun`` (one task per GPU); every helper is a no-op in a plain single-process
run, so the same code runs on one CPU or many GPUs."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from vgg.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0, or the only process)."""
    return get_rank() == 0


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` (this process's GPU under torchrun) or ``cuda:N``; a
    device this machine lacks is a UserError, not torch's traceback."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank}"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested} is not a device; use auto, cpu, cuda or "
                        "cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested}: only cpu and cuda GPUs are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but no CUDA GPU is "
                            "available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: this machine has "
                            f"{torch.cuda.device_count()} GPU(s), numbered from 0")
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class Launch:
    """Where this process stands in its job, as its launcher said: ``launcher`` is torchrun,
    slurm or none (a plain single process)."""
    launcher: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``gpu[007-010,12],cpu3`` -> ``gpu007``,
    ``rack[1-2]-n[01-04]`` -> ``rack1-n01`` (zero padding kept)."""
    entry = re.match(r"([^,\[]|\[[^\]]*\])+", nodelist.strip())
    if entry is None:
        raise UserError(f"SLURM's node list {nodelist!r} names no host; set MASTER_ADDR")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], entry.group(0))


def launch_environment(env: Mapping[str, str] = os.environ) -> Launch:
    """torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) when it started this
    process, also inside a SLURM job (``srun torchrun ...``); else SLURM's when ``srun``
    started it as one task of several (``SLURM_STEP_NUM_TASKS`` is set for srun's tasks only,
    so a batch script's own process, which also sees ``SLURM_NTASKS``, stays alone). Under
    srun the master is the step's first node, on ``MASTER_PORT`` if set, else on a port
    derived from the job id, so two jobs sharing a node do not collide."""
    if "WORLD_SIZE" in env:
        return Launch("torchrun", int(env.get("RANK", "0")), int(env["WORLD_SIZE"]),
                      int(env.get("LOCAL_RANK", "0")), env.get("MASTER_ADDR"),
                      int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None)
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        port = env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
        return Launch("slurm", int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                      int(env.get("SLURM_LOCALID", "0")),
                      env.get("MASTER_ADDR") or first_host(nodes), int(port))
    return Launch("none")


def restart_store(launch: Launch, env: Mapping[str, str] = os.environ) -> dist.Store | None:
    """The store this attempt's processes meet in, when torchrun's agent serves one: the agent
    keeps a single store across ``--max-restarts`` restarts and torch (2.11 to 2.14) no longer
    prefixes its workers' keys per attempt, so a restarted worker could read the address its
    dead predecessor published and fail with "Connection refused", or wait forever. Keys under
    the restart count keep the attempts apart. ``None`` (torch's own ``env://`` store)
    otherwise."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    # torchrun's agent, which serves the store, sets MASTER_ADDR and MASTER_PORT with it.
    assert launch.master_addr is not None and launch.master_port is not None
    store = dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size,
                          is_master=False, timeout=dist.default_pg_timeout)
    return dist.PrefixStore(f"vgg/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_distributed(device: str = "auto") -> tuple[int, int, int, torch.device]:
    """Join the process group when this process is one of several (``launch_environment``):
    NCCL on GPUs, gloo on CPUs. Returns ``(rank, world_size, local_rank, device)``; alone
    returns ``(0, 1, 0, device)``."""
    launch = launch_environment()
    world, local_rank = launch.world_size, launch.local_rank
    if launch.launcher == "slurm":  # what torchrun would have set, for init_process_group
        assert launch.master_addr is not None  # launch_environment names one for slurm
        os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(local_rank), MASTER_ADDR=launch.master_addr,
                          MASTER_PORT=str(launch.master_port))
    dev = pick_device(device, local_rank)
    if world > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, store=restart_store(launch), rank=launch.rank,
                                world_size=world, device_id=dev if dev.type == "cuda" else None)
    return get_rank(), get_world_size(), local_rank, dev


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where the process group's collectives take tensors: NCCL only reduces CUDA tensors
    (gloo takes both)."""
    if is_distributed() and dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all processes, on ``tensor``'s device (in place when that is
    the collective's device; ``tensor`` itself when alone). Counts kept on the CPU, such as
    evaluate.py's tally, travel to the GPU and back under NCCL."""
    if not is_distributed():
        return tensor
    device = collective_device() if tensor.device.type == "cpu" else tensor.device
    reduced = tensor.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


# How long the other processes wait at barrier() for rank 0's work on the host: a first
# listing of ImageNet's 1.28M files on a network file system can outlast the process group's
# timeout (10 minutes under NCCL), which then kills the job as a hang.
HOST_WAIT = timedelta(hours=2)
# (the default group, its gloo twin)
_host_group: tuple[dist.ProcessGroup | None, dist.ProcessGroup] | None = None


def barrier() -> None:
    """Wait, up to ``HOST_WAIT``, until every process has come here (nothing to wait for
    when alone). It meets in a gloo group of its own: no GPU collective sits waiting, and the
    training collectives keep their own, shorter timeout for real hangs."""
    global _host_group
    if not is_distributed():
        return
    if _host_group is None or _host_group[0] is not dist.group.WORLD:  # a new default group
        twin = dist.new_group(backend="gloo", timeout=HOST_WAIT)
        assert isinstance(twin, dist.ProcessGroup)  # every rank is in it: never NON_GROUP_MEMBER
        _host_group = (dist.group.WORLD, twin)
    dist.barrier(group=_host_group[1])


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out

