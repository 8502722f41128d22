"""Devices and processes: the device a process trains on, and the process group under ``torchrun``.

``torchrun --nproc-per-node N -m advkit train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; advkit then
initialises the process group itself (nccl on CUDA, gloo on CPU) with a timeout, so that a rank that
dies ends the job instead of hanging it. A plain ``advkit train`` has no such variables and stays one
process. Imported by training and evaluation alike (it imports neither), so the two never import each
other.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import AdvkitError

TIMEOUT_ENV = "ADVKIT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 900  # a collective waiting longer than this means a rank is gone: fail, do not hang


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls) -> World:
        """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process when they are absent."""
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            text = os.environ.get(name, str(default))
            try:
                values[name] = int(text)
            except ValueError:
                raise AdvkitError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None
        world = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if world.size < 1 or not 0 <= world.rank < world.size:
            raise AdvkitError(f"RANK={world.rank} and WORLD_SIZE={world.size} do not describe a process group")
        return world


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present (``cuda:LOCAL_RANK`` under torchrun); CUDA where there is none is a user error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvkitError(f"--device {name} was asked for, but CUDA is not available here (use --device cpu)")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


class ProcessGroup:
    """The initialised process group of a run, with the few collectives the trainer needs.

    Besides the default group (nccl on CUDA), a gloo group on the CPU carries control flags (stop
    requests), so reading one never waits for the GPU's queue. With one process every call is a no-op.
    """

    def __init__(self, world: World, device: torch.device) -> None:
        self.world = world
        self._control: Any = None
        if not world.distributed:
            return
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        if dist.get_world_size() != world.size:
            raise AdvkitError(f"the process group has {dist.get_world_size()} processes but WORLD_SIZE is {world.size}")
        self._control = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else None

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place (sum over ranks) and return it."""
        if self.world.distributed:
            dist.all_reduce(tensor)
        return tensor

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether a boolean device flag holds on every rank (one host sync)."""
        if not self.world.distributed:
            return bool(flag)
        count = flag.to(torch.int32).reshape(1)
        dist.all_reduce(count)
        return int(count.item()) == self.world.size

    def mean_gradients_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` (gradients) over ranks in place, in one all-reduce."""
        if not self.world.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        _copy_back(flat.div_(self.world.size), tensors)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values, in one broadcast per dtype."""
        if not self.world.distributed or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            _copy_back(flat, group)

    def concat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on each) concatenated along dim 0 in rank order; itself alone."""
        if not self.world.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of ``tensor`` summed over ranks (``tensor`` itself is left as it was)."""
        return self.sum_(tensor.clone())

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (small picklable objects: RNG states)."""
        if not self.world.distributed:
            return [value]
        values: list[Any] = [None] * self.world.size
        dist.all_gather_object(values, value, group=self._control)
        return values

    def start_flag_sum(self, value: bool) -> Any:
        """Begin summing a CPU flag over ranks without waiting; ``finish_flag_sum`` reads it later."""
        flag = torch.tensor([int(value)], dtype=torch.int32)
        if not self.world.distributed:
            return flag, None
        return flag, dist.all_reduce(flag, group=self._control, async_op=True)

    @staticmethod
    def finish_flag_sum(pending: Any) -> int:
        flag, work = pending
        if work is not None:
            work.wait()
        return int(flag.item())

    def close(self) -> None:
        if self.world.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _copy_back(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy the concatenation ``flat`` back into ``tensors`` (one message per collective, not one per tensor)."""
    chunks = flat.split([t.numel() for t in tensors])
    torch._foreach_copy_(tensors, [chunk.view_as(t) for chunk, t in zip(chunks, tensors, strict=True)])
