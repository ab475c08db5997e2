"""Running a command under ``torchrun``: one process group for the whole command, rank 0 the
only process that writes.

``torchrun --standalone --nproc-per-node N -m rmdiag train ...`` (or ``... run ...``) starts N
copies of the command. Each loads and splits the same data and computes the same things in the
same order, so every training (the policies and the sequence reward model, all through
``trainers.loop.train_loop``) runs data-parallel with DistributedDataParallel on the one process
group opened here. What needs no training is settled without a race:

- a choice that decides which trainings follow (reuse a stage kept in ``.work`` or train it, the
  algorithm the decision picked) is made on rank 0 and sent to the others (``share``,
  ``from_main``), so every rank joins the same collectives even if a figure rounded
  differently;
- files (``.work``, checkpoints, the published outputs) are written by rank 0 only
  (``is_main``), each atomically as before; the other ranks read ``.work`` only once rank 0 has
  told them what is there;
- work after the last training (scoring, reports) runs on rank 0 alone.

The group uses gloo for CPU tensors and, where CUDA is available, NCCL for CUDA tensors
(``"cpu:gloo,cuda:nccl"``): training on ``--device cuda`` reduces its gradients with NCCL while
the small objects rank 0 sends travel over gloo.

This module sits below ``rmdiag.rewards`` (the ensemble asks it whether to fit members in
worker processes) and imports only ``rmdiag.data`` and ``trainers``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from rmdiag.data import DataError
from trainers.loop import CheckpointMismatch

T = TypeVar("T")
# How long the other ranks wait at the end for rank 0's scoring and report (`process_group`).
EXIT_WAIT = timedelta(hours=24)


class RankZeroFailed(RuntimeError):
    """Raised on the other ranks when the step rank 0 ran for them failed there (rank 0 raises
    the error itself and reports it); ``bad_input`` says whether it was the input's fault (the
    command's exit code 2) or not (1)."""

    def __init__(self, message: str, bad_input: bool) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the job: the process group's size, else torchrun's WORLD_SIZE, else 1."""
    if _initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    if _initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the outputs: rank 0, or the only process."""
    return rank() == 0


def active() -> bool:
    """Whether this process is one of several (launched by torchrun)."""
    return world_size() > 1


def backend() -> str:
    """gloo for CPU tensors; NCCL for CUDA tensors where there is a GPU."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def process_group() -> Iterator[None]:
    """Open the process group when launched by torchrun (WORLD_SIZE > 1) and none is open, and
    close it at the end; otherwise do nothing. ``train_loop`` then finds the group open and
    leaves it alone, so one group serves every training of the command."""
    started, leaving = False, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        # NCCL needs each rank on its own GPU; more ranks than GPUs can only train on the CPU
        # (gloo), where no GPU is needed.
        if torch.cuda.is_available() and local < torch.cuda.device_count():
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend())
        leaving = dist.new_group(backend="gloo", timeout=EXIT_WAIT)
        started = True
    try:
        yield
        if started:
            # A command that succeeded leaves on every rank together: a rank that tore its
            # gloo group down while rank 0 was still scoring aborted now and then in gloo's
            # teardown ("terminate called without an active exception", SIGABRT, exit 1 from
            # torchrun). The barrier has its own group so that it may wait as long as rank 0's
            # work after the last training takes (13 min at 10M events), far past the default
            # 30-minute timeout kept for the trainings' collectives. A failing rank does not
            # wait: torchrun ends the others once one fails.
            dist.barrier(group=leaving)
    finally:
        if started:
            dist.destroy_process_group()


def describe() -> dict[str, Any]:
    """`{"world_size": N}` and, under torchrun, the process group's `backend` (summary.json's
    `distributed`)."""
    if not _initialized():
        return {"world_size": world_size()}
    return {"world_size": dist.get_world_size(), "backend": str(dist.get_backend())}


def _broadcast(value: Any) -> Any:
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def from_main(value: T) -> T:
    """Rank 0's `value` on every rank (a collective: every rank calls it at the same point);
    `value` itself without torchrun. For choices that decide which trainings follow."""
    if not active():
        return value
    return _broadcast(value if is_main() else None)  # type: ignore[no-any-return]


def _is_bad_input(error: BaseException) -> bool:
    return isinstance(error, DataError | CheckpointMismatch)


def share(step: Callable[[], T]) -> T:
    """Run `step` on rank 0 alone and give its result to every rank (a collective). When it
    fails on rank 0, rank 0 raises its error and the others `RankZeroFailed`, so none waits for
    a result that will not come. For a step that writes (rank 0 only) and decides what the
    ranks do next, e.g. whether `.work` holds a stage."""
    if not active():
        return step()
    if not is_main():
        outcome = _broadcast(None)
        if outcome[0] == "failed":
            raise RankZeroFailed(outcome[1], outcome[2])
        return outcome[1]  # type: ignore[no-any-return]
    try:
        value = step()
    except BaseException as error:
        _broadcast(("failed", f"rank 0 failed: {type(error).__name__}: {error}",
                    _is_bad_input(error)))
        raise
    _broadcast(("ok", value))
    return value
