"""Tensor datasets the trainers consume, and the next-item log-probabilities every loss starts from.

Two shapes of training data, both a plain `dict[str, Tensor]` whose values share their first
dimension (one row per example):

- sequences (every position trained at once): ``items`` LongTensor[N, L+1] and ``rewards``
  FloatTensor[N, L+1], left-padded with item 0. Position t's target is item t+1 and its history is
  items 0..t. Optional per-target ``weights`` / ``advantages`` [N, L+1] (aligned with ``items``;
  column 0 unused) and per-event ``timestamps`` LongTensor[N, L+1] (what HSTU's time bias reads).
- events (one target per row): ``users`` [N], ``history_items`` / ``history_rewards`` [N, L]
  (a `Context`), ``targets`` [N], ``target_rewards`` [N], optional ``weights`` / ``advantages``
  [N] and ``history_timestamps`` [N, L].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainers.model import SequentialRecommender
from trainers.protocols import Context

TensorData = dict[str, torch.Tensor]

SEQUENCE_KEYS = ("items", "rewards")
CONTEXT_KEYS = ("users", "history_items", "history_rewards")
OPTIONAL_CONTEXT_KEYS = ("history_timestamps",)  # carried wherever a Context's rows travel
EVENT_KEYS = (*CONTEXT_KEYS, "targets", "target_rewards")


def sequence_data(
    items: torch.Tensor,
    rewards: torch.Tensor,
    weights: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
) -> TensorData:
    """Validated sequence data (see module docstring)."""
    data = {"items": torch.as_tensor(items).long(), "rewards": torch.as_tensor(rewards).float()}
    for name, extra in (("weights", weights), ("advantages", advantages)):
        if extra is not None:
            data[name] = torch.as_tensor(extra).float()
    if timestamps is not None:
        data["timestamps"] = torch.as_tensor(timestamps).long()
    return check_data(data)


def event_data(
    context: Context,
    targets: torch.Tensor,
    target_rewards: torch.Tensor,
    weights: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
) -> TensorData:
    """Validated event data: one (history, next item, observed reward) per row."""
    data = _context_tensors(context) | {
        "targets": torch.as_tensor(targets).long(),
        "target_rewards": torch.as_tensor(target_rewards).float(),
    }
    for name, extra in (("weights", weights), ("advantages", advantages)):
        if extra is not None:
            data[name] = torch.as_tensor(extra).float()
    return check_data(data)


def _context_tensors(context: Context) -> TensorData:
    data = {
        "users": context.users.long(),
        "history_items": context.history_items.long(),
        "history_rewards": context.history_rewards.float(),
    }
    if context.history_timestamps is not None:
        data["history_timestamps"] = context.history_timestamps.long()
    return data


def context_data(context: Context) -> TensorData:
    """Histories only (what PPO rolls out from): users, history_items, history_rewards (and
    history_timestamps when the context has them)."""
    return check_data(_context_tensors(context))


def context_keys(data: TensorData) -> tuple[str, ...]:
    """The keys of `data` that make up its `Context` rows."""
    return CONTEXT_KEYS + tuple(key for key in OPTIONAL_CONTEXT_KEYS if key in data)


def rollout_histories(data: TensorData) -> TensorData:
    """The histories a policy rolls out from (PPO, DPO/IPO): every event's context, sequences
    unrolled so that each training position's history is one state."""
    events = sequences_to_events(data)
    return {key: events[key] for key in context_keys(events)}


def is_sequence_data(data: TensorData) -> bool:
    return "items" in data


def batch_context(batch: TensorData) -> Context:
    """The `Context` of an event or context batch."""
    return Context(batch["users"], batch["history_items"], batch["history_rewards"],
                   batch.get("history_timestamps"))


def sequences_to_events(data: TensorData, users: torch.Tensor | None = None) -> TensorData:
    """Unroll sequence rows into one event per target: its history is everything before it.

    Histories keep the row's full width L (left-padded). ``users`` [N] gives each row's user id
    (default: the data's ``users`` if it has them, else 0). Per-target ``weights`` and
    ``advantages`` carry over, and ``timestamps`` become ``history_timestamps``.
    """
    data = check_data(data)
    if not is_sequence_data(data):
        return data
    items, rewards = data["items"], data["rewards"]
    n_rows, width = items.shape
    if users is None:
        users = data.get("users", torch.zeros(n_rows, dtype=torch.long))
    row_users = users.long()
    row, column = (items[:, 1:] != 0).nonzero(as_tuple=True)
    column = column + 1  # position of the target in the row
    # History of the target at column c: items[:, :c], right-aligned into width L = width - 1.
    offsets = torch.arange(width - 1)
    source = column[:, None] - (width - 1) + offsets[None, :]
    inside = source >= 0
    source = source.clamp(min=0)
    history_items = torch.where(inside, items[row[:, None], source], 0)
    history_rewards = torch.where(inside, rewards[row[:, None], source], 0.0)
    events = {
        "users": row_users[row],
        "history_items": history_items,
        "history_rewards": history_rewards * (history_items != 0),
        "targets": items[row, column],
        "target_rewards": rewards[row, column],
    }
    for key in ("weights", "advantages"):
        if key in data:
            events[key] = data[key][row, column]
    if "timestamps" in data:
        events["history_timestamps"] = torch.where(inside, data["timestamps"][row[:, None], source],
                                                   0)
    return check_data(events)


def check_data(data: TensorData) -> TensorData:
    """Refuse data of the wrong shape with a message naming the tensor."""
    if is_sequence_data(data):
        required = SEQUENCE_KEYS
    else:
        required = EVENT_KEYS if "targets" in data else CONTEXT_KEYS
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(
            f"training data lacks {missing}; expected sequences {SEQUENCE_KEYS}, events "
            f"{EVENT_KEYS} or contexts {CONTEXT_KEYS}"
        )
    n_rows = {key: int(value.shape[0]) for key, value in data.items()}
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"training tensors disagree on the number of rows: {n_rows}")
    if next(iter(n_rows.values())) == 0:
        raise ValueError("training data has no rows")
    if is_sequence_data(data):
        if data["items"].dim() != 2 or data["items"].shape[1] < 2:
            shape = tuple(data["items"].shape)
            raise ValueError(f"items must be [N, L+1] with L >= 1, got {shape}")
        for key in ("rewards", "weights", "advantages", "timestamps"):
            if key in data and data[key].shape != data["items"].shape:
                raise ValueError(
                    f"{key} has shape {tuple(data[key].shape)}, items {tuple(data['items'].shape)}"
                )
    elif "history_timestamps" in data and (
            data["history_timestamps"].shape != data["history_items"].shape):
        raise ValueError(
            f"history_timestamps has shape {tuple(data['history_timestamps'].shape)}, "
            f"history_items {tuple(data['history_items'].shape)}"
        )
    if any(bool((value < 0).any()) for key, value in data.items() if key in ("items", "targets")):
        raise ValueError("item ids must be >= 0 (0 is padding)")
    return data


def sequence_windows(
    items: torch.Tensor, rewards: torch.Tensor, window: int, users: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
) -> TensorData:
    """Cut long left-padded per-user sequences [U, T] into training rows [N, window + 1].

    Each user's events are cut into windows of up to ``window + 1`` items from the most recent
    backwards; consecutive windows share one item, so every event is a target exactly once (a
    user's first event only when its window has padding before it, as a prediction from an empty
    history). Users with fewer than two events give no row. With ``users`` [U] (each row's user
    id), every window keeps its user in ``users`` (reward models condition on who it is).
    ``timestamps`` [U, T] (each event's time) are cut alongside into ``timestamps``.
    """
    items = torch.as_tensor(items).long()
    rewards = torch.as_tensor(rewards).float()
    row_users = torch.zeros(items.shape[0], dtype=torch.long) if users is None else users.long()
    cuts: list[tuple[int, torch.Tensor]] = []  # (row, positions of the window's events in it)
    for row, user_items in enumerate(items):
        positions = (user_items != 0).nonzero().flatten()
        end = positions.shape[0]
        while end >= 2:
            start = max(0, end - (window + 1))
            cuts.append((row, positions[start:end]))
            end = start + 1 if start > 0 else 0
    if not cuts:
        raise ValueError("no user has two or more events to train on")

    def windows(values: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.pad(values[row, at], (window + 1 - at.shape[0], 0))
                            for row, at in cuts])

    data = sequence_data(windows(items), windows(rewards), timestamps=None if timestamps is None
                         else windows(torch.as_tensor(timestamps).long()))
    if users is not None:
        data["users"] = row_users[torch.tensor([row for row, _ in cuts])]
    return data


@dataclass
class NextItemTargets:
    """Per-target quantities every loss starts from (flattened over valid targets).

    log_prob: log π(target | history) (full softmax, or sampled softmax with log-Q correction);
    reward: the observed reward of the target; history_mean: mean observed reward of the history
    (the user-mean baseline; the target's own reward when the history is empty, so its advantage
    is 0); weight / advantage: precomputed per-target values when the data carries them.
    """

    log_prob: torch.Tensor
    reward: torch.Tensor
    history_mean: torch.Tensor
    weight: torch.Tensor | None = None
    advantage: torch.Tensor | None = None


@dataclass
class TargetStates:
    """The policy's hidden state before every target in a batch (flattened over valid targets).

    hidden: [T, H], whose dot product with item embeddings scores the next item; targets: [T]
    item ids; reward / history_mean / weight / advantage as in `NextItemTargets`.
    """

    hidden: torch.Tensor
    targets: torch.Tensor
    reward: torch.Tensor
    history_mean: torch.Tensor
    weight: torch.Tensor | None = None
    advantage: torch.Tensor | None = None


def target_states(model: SequentialRecommender, batch: TensorData) -> TargetStates:
    """Hidden state, target, reward and baselines of every target in a sequence or event batch."""
    if is_sequence_data(batch):
        items = batch["items"]
        times = batch.get("timestamps")
        hidden = model.hidden_states(items[:, :-1], None if times is None else times[:, :-1])
        targets = items[:, 1:]
        valid = targets != 0
        hidden, target_ids = hidden[valid], targets[valid]
        reward = batch["rewards"][:, 1:][valid]
        # Mean reward of each target's history: running sum over the real items before it.
        history_rewards = batch["rewards"][:, :-1] * (items[:, :-1] != 0)
        counts = (items[:, :-1] != 0).float().cumsum(1)[valid]
        sums = history_rewards.cumsum(1)[valid]
        weight = batch["weights"][:, 1:][valid] if "weights" in batch else None
        advantage = batch["advantages"][:, 1:][valid] if "advantages" in batch else None
    else:
        hidden = model.hidden_states(batch["history_items"], batch.get("history_timestamps"))[:, -1]
        target_ids = batch["targets"]
        reward = batch["target_rewards"]
        is_item = batch["history_items"] != 0
        counts = is_item.float().sum(1)
        sums = (batch["history_rewards"] * is_item).sum(1)
        weight = batch.get("weights")
        advantage = batch.get("advantages")
    history_mean = torch.where(counts > 0, sums / counts.clamp(min=1), reward)
    return TargetStates(hidden, target_ids, reward, history_mean, weight, advantage)


def next_item_targets(
    model: SequentialRecommender,
    batch: TensorData,
    n_negatives: int = 0,
    log_q: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> NextItemTargets:
    """log π(target | history) for every target in the batch, plus its reward and baselines.

    With ``n_negatives > 0`` the softmax runs over the target and K = ``n_negatives`` items drawn
    with replacement (shared by the batch) from the proposal Q = ``exp(log_q)`` over items
    1..n_items, each negative's logit corrected by −log(K·Q) (sampled softmax with log-Q
    correction, Bengio & Senécal 2008; Yi et al. 2019); negatives equal to the target are
    masked. Otherwise it is the full softmax.
    """
    states = target_states(model, batch)
    hidden, target_ids = states.hidden, states.targets
    reward, history_mean = states.reward, states.history_mean
    weight, advantage = states.weight, states.advantage

    if n_negatives > 0:
        if log_q is None:
            raise ValueError("sampled softmax needs the proposal log_q over items 1..n_items")
        negatives = torch.multinomial(
            log_q.exp(), n_negatives, replacement=True, generator=generator
        ) + 1
        item_weight = model.item_embedding.weight
        positive = (hidden * item_weight[target_ids]).sum(-1)
        # exp(s - log(K·Q)) summed over K draws estimates Σ_items exp(s) without bias, so the
        # result approximates the full-softmax log π (and equals it in expectation of the sum).
        correction = log_q[negatives - 1] + math.log(n_negatives)
        negative = hidden @ item_weight[negatives].T - correction
        negative = negative.masked_fill(negatives[None, :] == target_ids[:, None], float("-inf"))
        logits = torch.cat([positive[:, None], negative], dim=1)
        log_prob = positive - torch.logsumexp(logits, dim=1)
    else:
        # Items 1..n_items only (the padding column never competes); cross_entropy fuses the
        # log-softmax and its backward, the costliest step after the output matmul.
        logits = hidden @ model.item_embedding.weight[1:].T
        log_prob = -F.cross_entropy(logits, target_ids - 1, reduction="none")
    return NextItemTargets(log_prob, reward, history_mean, weight, advantage)


def item_log_proposal(data: TensorData, n_items: int, smoothing: float = 1.0) -> torch.Tensor:
    """log Q over items 1..n_items for sampled softmax: target popularity, add-`smoothing`."""
    targets = data["items"][:, 1:] if is_sequence_data(data) else data["targets"]
    counts = torch.bincount(targets.flatten(), minlength=n_items + 1)[1:].double() + smoothing
    return (counts / counts.sum()).log().float()
