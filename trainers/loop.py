"""The one training loop every algorithm uses.

AdamW with linear warm-up then a cosine (or constant) schedule, gradient clipping, an evaluation
hook with early stopping, a tqdm progress bar, atomic checkpoints that `torch.load(...,
weights_only=True)` reads, exact resume, DistributedDataParallel when launched with torchrun, and
TensorBoard scalars when ``TrainConfig.log_dir`` is set.

An algorithm gives the loop a loss function ``loss_fn(model, batch, generator) -> (total,
normalizer)`` or ``(total, normalizer, scalars)``: the batch's summed (weighted) loss, what to
divide it by (a count, or the sum of weights for self-normalized losses), and optionally a dict of
diagnostics to log (e.g. ``{"kl": ...}``, plain numbers or 0-d tensors, no gradient). The loop
divides by the normalizer summed over *all* ranks, so a k-process run takes the same step as a
1-process run on the same global batch. Algorithms that collect data from the policy first (PPO,
DPO, GRPO) also give ``prepare(model, batch, generator) -> [minibatch, ...]``; the loop takes one
optimizer step per minibatch.

Every config field carries its documentation as ``field(metadata={"help": ...})``, which a command
line turns into flags; ``__post_init__`` validates the whole config (``problems()`` lists what is
wrong, and each algorithm's config extends it).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from trainers.data import TensorData, check_data

Scalars = Mapping[str, "torch.Tensor | float"]
LossFn = Callable[[nn.Module, TensorData, torch.Generator], tuple[Any, ...]]
PrepareFn = Callable[[nn.Module, TensorData, torch.Generator], list[TensorData]]
EvalFn = Callable[[nn.Module], dict[str, float]]

# 2: per-rank random states (lists), the world size and the config's type.
CHECKPOINT_VERSION = 2

# Config fields a resume may change: where and how often checkpoints and logs are written, the
# progress bar, and how long to train (a run may be continued for more steps or time; with a
# cosine schedule the decay then follows the new length). Any other difference is refused.
RESUME_MAY_CHANGE = frozenset(
    {"checkpoint_path", "checkpoint_every", "log_dir", "progress", "max_steps", "epochs",
     "max_seconds"}
)


class CheckpointMismatch(ValueError):
    """A resume whose setting differs from the checkpoint's; ``fields`` maps each differing
    name to (the checkpoint's value, the value now)."""

    def __init__(self, path: str | os.PathLike[str], fields: Mapping[str, tuple[object, object]],
                 advice: str = "resume with the checkpoint's settings, or start afresh without "
                 "it") -> None:
        self.fields = dict(fields)
        differences = "; ".join(f"{name}: {old!r} in the checkpoint, {new!r} now"
                                for name, (old, new) in self.fields.items())
        super().__init__(
            f"cannot resume {path}: it was written with other settings ({differences}); {advice}"
        )


def describe(text: str) -> dict[str, str]:
    """A config field's metadata: its help text (what a command-line flag shows)."""
    return {"help": text}


@dataclass
class TrainConfig:
    """Optimization settings shared by every algorithm (each algorithm's Config extends it)."""

    # How the algorithm uses a reward model -- "none" (observed rewards only), "optional" or
    # "required" -- and whether it takes a reference policy π_ref: what a pipeline passes it.
    reward_model: ClassVar[str] = "none"
    uses_reference: ClassVar[bool] = False

    lr: float = field(default=1e-3, metadata=describe(
        "AdamW step size; 1e-3 is SASRec's (Kang & McAuley 2018) and Adam's default"))
    weight_decay: float = field(default=0.0, metadata=describe(
        "decoupled weight decay (Loshchilov & Hutter 2019); 0 as in SASRec, which relies on "
        "dropout"))
    beta2: float = field(default=0.98, metadata=describe(
        "Adam's beta2; 0.98 as in SASRec / the original transformer, steadier for sparse "
        "embeddings"))
    batch_size: int = field(default=128, metadata=describe(
        "rows per optimizer step, summed over all DDP ranks (each rank takes every world-th row)"))
    epochs: float = field(default=1.0, metadata=describe(
        "passes over the data; ignored when max_steps is set"))
    max_steps: int | None = field(default=None, metadata=describe(
        "data batches to train on; None = epochs * (rows // batch_size)"))
    warmup_steps: int = field(default=0, metadata=describe(
        "linear warm-up from 0 to lr over this many steps (transformer practice, Vaswani et al.)"))
    schedule: str = field(default="constant", metadata=describe(
        "after warm-up: 'cosine' decays to min_lr_ratio * lr at the last step; 'constant' keeps "
        "lr"))
    min_lr_ratio: float = field(default=0.1, metadata=describe(
        "final learning rate of the cosine schedule, as a fraction of lr"))
    grad_clip: float | None = field(default=1.0, metadata=describe(
        "clip the global gradient norm (None = no clipping); 1.0 is the common transformer "
        "setting"))
    seed: int = field(default=0, metadata=describe(
        "random seed of the data order, dropout and the algorithm's sampling"))
    eval_every: int = field(default=0, metadata=describe(
        "call the evaluation hook every this many steps (0 = only after the last step)"))
    early_stopping_metric: str | None = field(default=None, metadata=describe(
        "early stopping: the evaluation hook's metric to maximize (None = no early stopping)"))
    patience: int = field(default=5, metadata=describe(
        "early stopping: evaluations without improvement allowed"))
    max_seconds: float | None = field(default=None, metadata=describe(
        "stop once this much training time (seconds, evaluation excluded) has passed"))
    checkpoint_path: str | None = field(default=None, metadata=describe(
        "atomic checkpoint written every checkpoint_every steps and at the end (None = none)"))
    checkpoint_every: int = field(default=0, metadata=describe(
        "steps between checkpoints (0 = only at the end)"))
    log_dir: str | None = field(default=None, metadata=describe(
        "write TensorBoard scalars here (loss, learning rate, evaluation figures, KL and the "
        "algorithm's other diagnostics), from rank 0; needs the tensorboard package "
        "(extra 'tensorboard'); None = write nothing"))
    progress: bool = field(default=True, metadata=describe("show a tqdm progress bar"))
    device: str = field(default="cpu", metadata=describe(
        "torch device ('cpu', 'cuda'); under torchrun each rank takes its LOCAL_RANK GPU"))

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when valid); each Config extends it."""
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.beta2 < 1:
            problems.append(f"beta2 must be in [0, 1), got {self.beta2}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.epochs > 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            problems.append("eval_every and checkpoint_every must be >= 0")
        if self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            problems.append(f"max_seconds must be > 0 or None, got {self.max_seconds}")
        device = device_problem(self.device)
        if device:
            problems.append(device)
        return problems


def device_problem(device: str, here: bool = True) -> str | None:
    """Why `device` cannot train here (None when it can): not a torch device name, or (with
    `here`) a CUDA device on a machine without one -- checked up front, so that a run fails
    before it trains anything rather than at its first tensor on the device. `here=False` checks
    the form only (a configuration read back from a file written on another machine)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        return f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
    if parsed.type == "cuda" and here:
        if not torch.cuda.is_available():
            return f"device {device!r}: no CUDA device is available on this machine"
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return (f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                    "device(s)")
    elif parsed.type not in ("cpu", "cuda"):
        return f"device must be 'cpu' or 'cuda[:N]', got {device!r}"
    return None


@dataclass
class TrainResult:
    """What a run did. ``model`` holds the best evaluated weights when early stopping is on."""

    model: nn.Module
    steps: int
    rows_seen: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float | None = None
    stopped_early: bool = False


class _LossModule(nn.Module):
    """Wraps policy + loss so DistributedDataParallel sees the whole loss computation in forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: TensorData, generator: torch.Generator) -> torch.Tensor:
        total, normalizer, *extra = self.loss_fn(self.model, batch, generator)
        # The loss function's diagnostics, read by the loop after the step (never differentiated).
        self.scalars: Scalars = extra[0] if extra else {}
        normalizer = normalizer.detach().to(total.dtype)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            normalizer = normalizer.clone()
            dist.all_reduce(normalizer)
            # DDP averages gradients over ranks; scaling by world size turns that into a sum.
            return total * dist.get_world_size() / normalizer.clamp(min=1e-12)
        return total / normalizer.clamp(min=1e-12)


def _distributed_setup(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we initialized the process group) from torchrun's env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device), False
    started = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        started = True
    rank = dist.get_rank()
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local), started
    return rank, world, torch.device(device), started


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then constant or cosine decay to min_lr_ratio * lr."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, object]) -> None:
    """Write `state` atomically: a temp file in the same directory, then os.replace."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a checkpoint safely (tensors and plain values only; nothing is unpickled)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "version" not in state:
        raise ValueError(f"{path} is not a trainers checkpoint (version {CHECKPOINT_VERSION})")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointMismatch(path, {"checkpoint version": (state["version"],
                                                               CHECKPOINT_VERSION)})
    return state


def config_values(config: TrainConfig) -> dict[str, object]:
    """The config as the checkpoint keeps it: plain values, and its type's name."""
    return {"type": type(config).__name__, **asdict(config)}


def check_resume(path: str | os.PathLike[str], state: Mapping[str, object],
                 config: TrainConfig, world: int) -> None:
    """Refuse (CheckpointMismatch) a resume under another world size or a config that differs
    from the checkpoint's outside RESUME_MAY_CHANGE."""
    saved = state["config"]
    assert isinstance(saved, dict)
    now = config_values(config)
    fields = {name: (saved.get(name), now.get(name)) for name in sorted(saved.keys() | now.keys())
              if name not in RESUME_MAY_CHANGE and saved.get(name) != now.get(name)}
    if state["world_size"] != world:
        fields["world size"] = (state["world_size"], world)
    if fields:
        raise CheckpointMismatch(path, fields)


def _gather(state: torch.Tensor, world: int, device: torch.device) -> list[torch.Tensor]:
    """Every rank's `state` (a uint8 tensor of the same size on each), in rank order, on CPU:
    tensors, not pickled objects, so the checkpoint still loads with weights_only=True."""
    if world == 1:
        return [state.clone()]
    local = state.to(device)  # NCCL gathers CUDA tensors only; gloo takes CPU ones
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def _agree(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (a collective)."""
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def _summary_writer_class() -> Any:
    """TensorBoard's SummaryWriter, or an ImportError that says how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "TrainConfig.log_dir writes TensorBoard scalars, which needs the tensorboard package: "
            "pip install 'rmdiag[tensorboard]' (or pip install tensorboard), or leave log_dir unset"
        ) from error
    return SummaryWriter


def _epoch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    # The order of each epoch is a function of (seed, epoch) alone, so a resumed run replays it.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=generator)


def _schedule(n_rows: int, config: TrainConfig) -> tuple[int, int, int]:
    """(batch_size, steps_per_epoch, total_steps) of a run of `config` on `n_rows` rows."""
    batch_size = min(config.batch_size, n_rows)
    steps_per_epoch = max(1, n_rows // batch_size)  # the last incomplete batch is dropped
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    return batch_size, steps_per_epoch, total_steps


def drawn_rows(n_rows: int, config: TrainConfig) -> torch.Tensor:
    """The rows a whole `train_loop` run of `config` on `n_rows` rows draws (every rank's share
    of each batch), sorted [R] -- for a per-row precomputation that a short run needs on a few
    rows only (A-SFT's b(s): 120 steps of 128 rows touch 7% of a 222,500-user log). A run cut
    short by ``max_seconds`` or early stopping draws a subset of them."""
    if n_rows == 0:
        return torch.zeros(0, dtype=torch.long)
    batch_size, steps_per_epoch, total_steps = _schedule(n_rows, config)
    drawn = torch.zeros(n_rows, dtype=torch.bool)
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        drawn[_epoch_order(n_rows, config.seed, epoch)[: steps * batch_size]] = True
        if bool(drawn.all()):  # a long run: no need to replay its other epochs
            break
    return drawn.nonzero().squeeze(1)


def train_loop(
    model: nn.Module,
    data: TensorData,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    prepare: PrepareFn | None = None,
    eval_fn: EvalFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train `model` in place on `data` (see trainers.data) with `loss_fn`; see module docstring.

    ``eval_fn(model) -> {name: value}`` runs in eval mode without gradients every
    ``config.eval_every`` steps and after the last; its figures go into ``history``. With
    ``early_stopping_metric`` the run stops after ``patience`` evaluations without a new best and
    the model is left with its best weights. ``resume_from`` continues a run from its checkpoint
    (same data, world size and config up to ``RESUME_MAY_CHANGE``, else ``CheckpointMismatch``):
    the result equals the uninterrupted run's.
    """
    data = check_data(data)
    # Refuse a log_dir without tensorboard before any work; only rank 0 writes.
    summary_writer = _summary_writer_class() if config.log_dir is not None else None
    rank, world, device, started_group = _distributed_setup(config.device)
    n_rows = int(next(iter(data.values())).shape[0])
    if config.batch_size < world:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {world} ranks")
    batch_size, steps_per_epoch, total_steps = _schedule(n_rows, config)

    model.to(device)
    model.train()
    inner = _LossModule(model, loss_fn)
    loss_module: nn.Module = inner
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(inner)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, config.beta2),
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator(device=device)
    step, rows_seen, train_seconds = 0, 0, 0.0
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_score: float | None = None
    best_step: int | None = None
    evals_since_best = 0

    if resume_from is not None:
        state = load_checkpoint(resume_from)
        check_resume(resume_from, state, config, world)
        model.load_state_dict(state["model"])  # type: ignore[arg-type]
        optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        # Each rank its own random state: its dropout masks and samples go on as uninterrupted.
        torch.set_rng_state(state["torch_rng"][rank])  # type: ignore[index]
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][rank], device)  # type: ignore[index]
        generator.set_state(state["generator"][rank])  # type: ignore[index]
        step, rows_seen = int(state["step"]), int(state["rows_seen"])  # type: ignore[call-overload]
        train_seconds = float(state["train_seconds"])  # type: ignore[arg-type]
        history = list(state["history"])  # type: ignore[call-overload]
        best_state = state["best_state"]  # type: ignore[assignment]
        best_score = state["best_score"]  # type: ignore[assignment]
        best_step = state["best_step"]  # type: ignore[assignment]
        evals_since_best = int(state["evals_since_best"])  # type: ignore[call-overload]
    else:
        # Different dropout masks on each rank, as with independent workers.
        torch.manual_seed(config.seed + rank)
        generator.manual_seed(config.seed + 7919 * (rank + 1))

    def checkpoint_state() -> dict[str, object]:
        """The run's state; a collective under torchrun (every rank's random state)."""
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return {
            "version": CHECKPOINT_VERSION,
            "world_size": world,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": _gather(torch.get_rng_state(), world, device),
            "cuda_rng": None if cuda_rng is None else _gather(cuda_rng, world, device),
            "generator": _gather(generator.get_state(), world, device),
            "step": step,
            "rows_seen": rows_seen,
            "train_seconds": train_seconds,
            "history": history,
            "best_state": best_state,
            "best_score": best_score,
            "best_step": best_step,
            "evals_since_best": evals_since_best,
            "config": config_values(config),
        }

    def evaluate() -> bool:
        """Run the hook; True when early stopping says stop."""
        nonlocal best_state, best_score, best_step, evals_since_best
        if eval_fn is None:
            return False
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in eval_fn(model).items()}
        model.train()
        history.append({"step": float(step), "train_seconds": train_seconds, **metrics})
        if writer is not None:
            for name, value in metrics.items():
                writer.add_scalar(f"eval/{name}", value, step)
        if config.early_stopping_metric is None:
            return False
        if config.early_stopping_metric not in metrics:
            raise KeyError(
                f"early_stopping_metric {config.early_stopping_metric!r} is not among the "
                f"evaluation hook's figures {sorted(metrics)}"
            )
        score = metrics[config.early_stopping_metric]
        if best_score is None or score > best_score:
            best_score, best_step, evals_since_best = score, step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        evals_since_best += 1
        return evals_since_best >= config.patience

    order_epoch, order = -1, torch.empty(0, dtype=torch.long)
    stopped_early = False
    last_loss = float("nan")
    writer = None
    progress = tqdm(
        total=total_steps, initial=step, disable=not config.progress or rank != 0,
        desc="train", dynamic_ncols=True,
    )
    try:
        if summary_writer is not None and rank == 0:
            # A resumed run purges what the interrupted one logged after its checkpoint (a step's
            # scalars are logged under its 1-based number, so the checkpoint holds 1..step).
            purge_step = step + 1 if resume_from is not None else None
            writer = summary_writer(config.log_dir, purge_step=purge_step)
        while step < total_steps:
            tick = time.perf_counter()
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, _epoch_order(n_rows, config.seed, epoch)
            rows = order[position * batch_size : (position + 1) * batch_size][rank::world]
            batch = {key: value[rows].to(device) for key, value in data.items()}
            minibatches = prepare(model, batch, generator) if prepare is not None else [batch]
            lr = learning_rate(config, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses: list[float] = []
            scalars: dict[str, float] = {}
            for minibatch in minibatches:
                loss = loss_module(minibatch, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                if writer is not None:
                    for name, value in inner.scalars.items():
                        scalars[name] = scalars.get(name, 0.0) + float(value) / len(minibatches)
            last_loss = sum(losses) / len(losses)
            step += 1
            rows_seen += batch_size
            train_seconds += time.perf_counter() - tick
            progress.update(1)
            progress.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            if writer is not None:  # the step's mean over its minibatches, on rank 0's rows
                writer.add_scalar("train/loss", last_loss, step)
                writer.add_scalar("train/lr", lr, step)
                for name, value in scalars.items():
                    writer.add_scalar(f"train/{name}", value, step)
            out_of_time = config.max_seconds is not None and train_seconds >= config.max_seconds
            if world > 1 and config.max_seconds is not None:
                # Each rank measures its own time: rank 0's clock decides for all, else one
                # rank stops while the others wait in the next step's all-reduce forever.
                out_of_time = _agree(out_of_time, device)
            last = step >= total_steps or out_of_time
            if (config.eval_every and step % config.eval_every == 0) or last:
                stopped_early = evaluate()
                if world > 1 and config.early_stopping_metric is not None:
                    # The ranks hold the same weights, so their figures agree -- unless the hook
                    # is not deterministic; rank 0's decision keeps them stepping together.
                    stopped_early = _agree(stopped_early, device)
            due = config.checkpoint_every and step % config.checkpoint_every == 0
            if config.checkpoint_path is not None and (due or last or stopped_early):
                snapshot = checkpoint_state()  # on every rank: it gathers their random states
                if rank == 0:
                    save_checkpoint(config.checkpoint_path, snapshot)
            if stopped_early or out_of_time:
                break
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if started_group:
            dist.destroy_process_group()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model, step, rows_seen, train_seconds, history, best_step, best_score, stopped_early
    )
