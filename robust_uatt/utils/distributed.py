"""torch.distributed as robust-uatt uses it: torchrun's environment, one process group, collectives that cannot hang.

``torchrun`` (or SLURM's ``srun`` with the same variables exported) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT; without WORLD_SIZE (or with WORLD_SIZE=1) nothing here starts a process group and every helper is
a no-op, so a one-process run takes exactly the path it always took. Backends: gloo on the CPU, NCCL on CUDA (each
process on ``cuda:LOCAL_RANK``). The group is created with a timeout (``ROBUST_UATT_DIST_TIMEOUT`` seconds, default
900): a rank that dies closes its sockets and the others' next collective fails at once; a rank that hangs makes
the others fail after the timeout. Either way they stop with ``DistributedFailure`` (one line, exit 5), never hang.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from robust_uatt.utils.errors import UserError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 900.0


class DistributedFailure(RuntimeError):
    """Another rank stopped (killed, crashed) or did not answer within the timeout; rerun the command to resume."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the launch: rank, world size, rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def launch() -> Launch:
    """This process's place from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"bad launch: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} (need 0 <= RANK < "
                        f"WORLD_SIZE)")
    return Launch(rank, world, local)


def timeout_s() -> float:
    text = os.environ.get("ROBUST_UATT_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"ROBUST_UATT_DIST_TIMEOUT={text!r} is not a number of seconds") from None
    if not value > 0:
        raise UserError(f"ROBUST_UATT_DIST_TIMEOUT must be positive, got {text}")
    return value


def device_for(device: torch.device, where: Launch) -> torch.device:
    """CUDA: this process's GPU (``cuda:LOCAL_RANK``); the CPU as it is."""
    if device.type == "cuda" and where.distributed:
        return torch.device("cuda", where.local_rank)
    return device


def init(device: torch.device) -> Launch:
    """Join the process group of a torchrun launch (gloo for the CPU, NCCL for CUDA); a no-op for one process."""
    where = launch()
    if not where.distributed or dist.is_initialized():
        return where
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise UserError(f"WORLD_SIZE={where.world_size} but {var} is not set: launch with torchrun "
                            f"(torchrun --nproc_per_node=N -m robust_uatt ...)")
    if device.type == "cuda":
        torch.cuda.set_device(where.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    with collective("joining the process group"):
        dist.init_process_group(backend, rank=where.rank, world_size=where.world_size,
                                timeout=timedelta(seconds=timeout_s()))
    return where


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group while the interpreter is fully alive. Objects that hold the group (a
    DistributedDataParallel wrapper's reducer, caught in a reference cycle) are collected first: left to interpreter
    finalization, their gloo worker threads can be torn down mid-exit and abort the process (SIGABRT, "terminate
    called without an active exception") after the run has finished."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective (a dead peer's closed socket, a timeout) into one clear ``DistributedFailure``."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except (RuntimeError, ConnectionError, OSError, ValueError) as e:
        if not _peer_failure(e):
            raise  # a bug or a model error inside the collective's call: its own traceback, not "another rank"
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else launch().rank
        raise DistributedFailure(
            f"rank {rank}: {what} failed: another rank stopped or did not answer within {timeout_s():.0f} s "
            f"({e.__class__.__name__}: {first})") from None


_PEER_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer", "broken pipe", "store",
               "process group", "distbackenderror")


def _peer_failure(e: BaseException) -> bool:
    """An error from the backend or the network (a closed socket, a timeout), not from the code being run."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    if isinstance(e, ConnectionError):
        return True
    text = f"{e.__class__.__name__}: {e}".lower()
    return any(word in text for word in _PEER_WORDS)


def all_gather_object(obj: T, what: str) -> list[T]:
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    with collective(what):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, what: str, src: int = 0) -> T:
    if not active():
        return obj
    box = [obj]
    with collective(what):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_(tensor: torch.Tensor, what: str, op: str = "sum") -> torch.Tensor:
    """In place; a CPU tensor goes through the backend's device (NCCL needs CUDA tensors) and back."""
    if not active():
        return tensor
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    buf = tensor.to(device)
    with collective(what):
        dist.all_reduce(buf, op=reduce_op)
    tensor.copy_(buf.to(tensor.device))
    return tensor


def barrier(what: str) -> None:
    if active():
        all_gather_object(None, what)  # a gather, not dist.barrier: it fails the same way on a dead peer, any backend


def unanimous(fn: Callable[[], T], what: str) -> T:
    """Run ``fn`` on every rank; if it raises a UserError on any, every rank raises it (rank-prefixed for rank > 0),
    so a bad setting seen by one rank is one line and exit 2 everywhere instead of a hang on the next collective."""
    try:
        value, error = fn(), None
    except UserError as e:
        value, error = None, str(e)
    errors = all_gather_object(error, what)
    for rank, message in enumerate(errors):
        if message:
            raise UserError(message if rank == 0 else f"rank {rank}: {message}")
    return value  # type: ignore[return-value]


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def same_everywhere(obj: Any, what: str) -> None:
    """Every rank must hold the same ``obj`` (its configuration): a UserError on every rank otherwise."""
    digests = all_gather_object(digest(obj), f"comparing {what} across ranks")
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise UserError(f"rank {odd[0]}'s {what} differs from rank 0's: launch every rank with the same command "
                        f"and files")


__all__ = ["Launch", "DistributedFailure", "launch", "init", "active", "shutdown", "device_for", "collective",
           "all_gather_object", "broadcast_object", "all_reduce_", "barrier", "unanimous", "same_everywhere",
           "digest", "timeout_s"]
