"""A small causal transformer reward model over the user's history (torch, CPU-friendly).

Tokens are item embeddings plus a projection of the (standardized) observed reward, so the model
reads both what the user consumed and how they rated it. A learned start token sits right before
the first real event; attention is causal with ALiBi recency biases (Press et al., 2022) instead
of position embeddings, so a hidden state means "the history up to here" whatever the padding.
The reward head scores a candidate from (hidden state, candidate embedding):
``mean + item_bias[c] + MLP([h, e_c, h * e_c])``.

The blocks are the policy's (``trainers.model.TransformerBlock``, feed-forward 2x wide), and
training runs through the project's one loop (``trainers.loop.train_loop``): windows of the
user's sequences (``rmdiag.sequences``), at every position the hidden state of the events before
predicts the reward of the next event, all positions of a window at once (teacher forcing),
weighted squared error, AdamW with gradient clipping, and early stopping on the tuning events
``valid`` (their MSE, evaluated once an epoch; the best epoch's weights are kept).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch
from torch import nn

from rmdiag.data import Interactions
from rmdiag.rewards.base import (
    PREDICT_BATCH,
    RewardModel,
    columns,
    event_weights,
    pad_last,
    torch_threads,
)
from rmdiag.sequences import event_sequences, user_sequences
from trainers.data import TensorData
from trainers.loop import TrainConfig, train_loop
from trainers.model import TransformerBlock
from trainers.protocols import Context

# Feed-forward width of the blocks as a multiple of dim: the model is small, as it was when it
# had a block of its own (the policy's default is 4).
FFN_MULTIPLIER = 2
# State-dict names of the block this model had before it reused the policy's, mapped to the
# policy block's: reward models saved then load unchanged (same shapes, same computation).
_OLD_BLOCK_NAMES = {"norm1.": "attn_norm.", "out.": "attn_out.", "norm2.": "ffn_norm.",
                    "mlp.": "ffn."}


def _alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric head slopes 2^(-8 i / H), i = 1..H (Press et al., 2022)."""
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])


class _RewardTransformer(nn.Module):
    def __init__(self, n_items: int, dim: int, n_layers: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        nn.init.zeros_(self.item_bias.weight)
        self.reward_proj = nn.Linear(1, dim)
        self.start = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, n_heads, dropout, FFN_MULTIPLIER) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.register_buffer("slopes", _alibi_slopes(n_heads), persistent=False)
        self._register_load_state_dict_pre_hook(_rename_old_block_keys)

    def encode(self, items: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L + 1, d] of left-padded histories [B, L] (standardized rewards).

        Position j + 1 summarises the events up to column j; the start token sits just before
        the first real event, so the last position always summarises the whole history.
        """
        b, length = items.shape
        real = items > 0
        n_real = real.sum(1)
        tokens = self.items(items) + self.reward_proj(rewards.unsqueeze(-1)) * real.unsqueeze(-1)
        x = torch.cat([tokens.new_zeros(b, 1, tokens.shape[-1]), tokens], dim=1)
        positions = torch.arange(length + 1, device=items.device)
        is_start = positions[None, :] == (length - n_real)[:, None]
        x = torch.where(is_start.unsqueeze(-1), self.start.expand_as(x), x)
        keys = is_start | torch.cat([real.new_zeros(b, 1), real], dim=1)
        distance = (positions[:, None] - positions[None, :]).float()  # query - key
        causal = distance >= 0
        bias = -self.slopes[:, None, None] * distance.clamp(min=0)  # [H, T, T]
        allowed = causal[None, None] & keys[:, None, None, :]  # [B, 1, T, T]
        # Queries before the start token see no key; let them see themselves to avoid NaN rows.
        allowed = allowed | torch.eye(length + 1, dtype=torch.bool, device=items.device)
        mask = bias[None].masked_fill(~allowed, float("-inf"))
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def score(self, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] and candidates [..., K] -> standardized rewards [..., K]."""
        emb = self.items(candidates)
        h = hidden.unsqueeze(-2).expand_as(emb)
        out = self.head(torch.cat([h, emb, h * emb], dim=-1)).squeeze(-1)
        return out + self.item_bias(candidates).squeeze(-1)


def _rename_old_block_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load hook: rename the former block's parameters (``_OLD_BLOCK_NAMES``) in place."""
    blocks = f"{prefix}blocks."
    for key in [k for k in state_dict if k.startswith(blocks)]:
        index, _, rest = key[len(blocks):].partition(".")
        for old, new in _OLD_BLOCK_NAMES.items():
            if rest.startswith(old):
                state_dict[f"{blocks}{index}.{new}{rest[len(old):]}"] = state_dict.pop(key)
                break


# Pseudo-events shrinking the initial item biases toward zero (the same scale as the baselines'
# shrinkage grid; the bias keeps training afterwards).
ITEM_PRIOR_STRENGTH = 5.0


def _sequence_loss(
    network: nn.Module, batch: TensorData, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_loop``'s loss: the weighted squared error of every next-event reward (rewards
    standardized) given the events before it, summed, and the summed weight."""
    assert isinstance(network, _RewardTransformer)
    items, rewards = batch["items"], batch["rewards"]
    inputs, targets = items[:, :-1], items[:, 1:]
    hidden = network.encode(inputs, rewards[:, :-1])[:, 1:]
    # hidden[:, j] summarises inputs up to column j, i.e. everything before targets[:, j]
    # (the start token for a sequence's first event).
    pred = network.score(hidden, targets.unsqueeze(-1)).squeeze(-1)
    weight = (targets > 0).float() * batch["weights"][:, 1:]
    return ((pred - rewards[:, 1:]) ** 2 * weight).sum(), weight.sum()


class SequenceRewardModel(RewardModel):
    """Causal-transformer reward model (module docstring). Small by default: it trains on CPU in
    seconds on MovieLens-100K (dim 32, 2 layers, 2 heads). ``n_threads`` torch threads (default
    1: a model this small gains nothing from more, and on a shared machine they contend)."""

    kind = "sequence"

    def __init__(
        self,
        history_len: int = 50,
        dim: int = 32,
        n_layers: int = 2,
        n_heads: int = 2,
        dropout: float = 0.1,
        epochs: int = 20,
        batch_size: int = 128,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-2,
        patience: int = 3,
        all_events: bool = True,
        n_threads: int | None = 1,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.history_len = history_len
        self.dim = dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.all_events = all_events
        self.n_threads = n_threads
        self.device = device
        self.seed = seed

    def _standardize(self, rewards: np.ndarray | torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(rewards, dtype=torch.float32) - self.mean_) / self.scale_

    def _validation_loss(self, valid_batch: tuple[torch.Tensor, ...]) -> float:
        """MSE of the tuning events (real scale), the network in eval mode. In batches of
        PREDICT_BATCH: one forward pass over every user's tuning event holds [N, heads, L, L]
        attention scores: at 222,000 users (a 10M-event log) the member held 13.9 GB when the
        system killed it."""
        items, rewards, targets, target_rewards = valid_batch
        device = next(self.network_.parameters()).device  # the training device
        with torch.no_grad():  # only the predictions are kept whole: [N] floats
            pred = torch.cat([
                self._forward_last(items[rows].to(device), rewards[rows].to(device),
                                   targets[rows, None].to(device))[:, 0].cpu()
                for rows in (slice(s, s + PREDICT_BATCH)
                             for s in range(0, len(targets), PREDICT_BATCH))
            ])
        return float(torch.mean((pred - target_rewards) ** 2))

    def _forward_last(
        self, items: torch.Tensor, rewards: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Rewards of candidates [B, K] after histories [B, L] (real scale)."""
        items = torch.where(items <= self.n_items_, items, torch.zeros_like(items))
        rewards = self._standardize(rewards)
        hidden = self.network_.encode(items, rewards)[:, -1]
        known = candidates <= self.n_items_
        safe = torch.where(known, candidates, torch.zeros_like(candidates))
        return self.network_.score(hidden, safe) * self.scale_ + self.mean_

    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_weight: np.ndarray | None = None,
    ) -> Self:
        with torch_threads(self.n_threads):
            return self._fit(train, valid, user_weight)

    def _fit(
        self, train: Interactions, valid: Interactions | None, user_weight: np.ndarray | None
    ) -> Self:
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        self._refuse_empty(train)
        _, _, reward = columns(train)
        weight = event_weights(train, user_weight)
        self.mean_ = float(np.average(reward, weights=weight))
        self.scale_ = float(
            max(np.sqrt(np.average((reward - self.mean_) ** 2, weights=weight)), 1e-6)
        )
        self.n_items_ = train.n_items
        torch.manual_seed(self.seed)  # the initial weights; train_loop seeds the rest
        self.network_ = _RewardTransformer(
            train.n_items, self.dim, self.n_layers, self.n_heads, self.dropout
        )
        # Start the item biases at the items' shrunk mean rewards (standardized): the head then
        # learns what the history adds to item quality instead of rediscovering item quality
        # from sequences, which takes many more epochs than a CPU budget allows.
        _, items_, _ = columns(train)
        counts = np.bincount(items_, weights=weight, minlength=train.n_items + 1)
        sums = np.bincount(
            items_, weights=weight * (reward - self.mean_), minlength=train.n_items + 1
        )
        with torch.no_grad():
            prior = sums / (counts + ITEM_PRIOR_STRENGTH) / self.scale_
            self.network_.item_bias.weight[:, 0] = torch.as_tensor(prior, dtype=torch.float32)
        seq_items, seq_rewards, seq_users = self._training_windows(train)
        seq_weight = torch.ones(len(seq_items))
        if user_weight is not None:
            seq_weight = torch.as_tensor(np.asarray(user_weight, dtype=np.float32)[seq_users])
        keep = (seq_items[:, 1:] > 0).any(1) & (seq_weight > 0)  # windows with a target
        data: TensorData = {
            "items": seq_items[keep],
            "rewards": self._standardize(seq_rewards[keep]),
            "weights": seq_weight[keep][:, None].expand_as(seq_items[keep]).contiguous(),
        }

        valid_batch = None
        if valid is not None and len(valid.table) > 0:
            v = event_sequences(train, valid, self.history_len)
            valid_batch = (
                torch.as_tensor(pad_last(v.history_items, self.history_len), dtype=torch.long),
                torch.as_tensor(pad_last(v.history_rewards, self.history_len), dtype=torch.float32),
                torch.as_tensor(v.targets, dtype=torch.long),
                torch.as_tensor(v.target_rewards, dtype=torch.float32),
            )
        self.fitted_ = True  # the evaluation hook predicts with the network being trained
        n_rows = len(data["items"])
        self.validation_history_: list[dict[str, float]] = []
        if n_rows == 0:  # every user weighted 0: the item prior is all there is
            self.network_.eval()
            return self
        steps_per_epoch = max(1, n_rows // min(self.batch_size, n_rows))  # as train_loop's
        config = TrainConfig(
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            beta2=0.999,  # Adam's default: a small regression model, not a sparse softmax
            batch_size=self.batch_size,
            epochs=self.epochs,
            grad_clip=1.0,
            seed=self.seed,
            eval_every=steps_per_epoch if valid_batch is not None else 0,
            early_stopping_metric="neg_valid_mse" if valid_batch is not None else None,
            patience=self.patience,
            progress=False,
            device=self.device,
        )

        def eval_fn(module: nn.Module) -> dict[str, float]:
            assert valid_batch is not None
            return {"neg_valid_mse": -self._validation_loss(valid_batch)}

        result = train_loop(
            self.network_,
            data,
            _sequence_loss,
            config,
            eval_fn=eval_fn if valid_batch is not None else None,
        )
        # one entry per epoch evaluated: {"step", "train_seconds", "neg_valid_mse"}
        self.validation_history_ = result.history
        self.network_.cpu().eval()  # (trained in place) predictions and saved files: CPU-side
        return self

    def _training_windows(
        self, train: Interactions
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Windows of history_len + 1 events (left-padded) that tile each user's sequence.

        Without ``all_events`` only each user's last window (``user_sequences``, as the policy
        trains); with it, windows end at the user's last event and every ``history_len`` events
        before it, so every training event is a target once, built by ``event_sequences``.
        """
        length = self.history_len + 1
        if not self.all_events:
            sequences = user_sequences(train, length)
            users = np.arange(1, train.n_users + 1)
            return (
                torch.as_tensor(sequences.items[1:], dtype=torch.long),
                torch.as_tensor(sequences.rewards[1:], dtype=torch.float32),
                users,
            )
        users = train.users
        counts = np.bincount(users, minlength=train.n_users + 1)
        from_end = np.cumsum(counts)[users] - 1 - np.arange(len(users))
        anchors = train.take(from_end % self.history_len == 0)
        windows = event_sequences(train, anchors, self.history_len)
        items = np.concatenate([windows.history_items, windows.targets[:, None]], axis=1)
        rewards = np.concatenate(
            [windows.history_rewards, windows.target_rewards[:, None].astype(np.float32)], axis=1
        )
        return (
            torch.as_tensor(items, dtype=torch.long),
            torch.as_tensor(rewards, dtype=torch.float32),
            windows.users,
        )

    def predict(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        history_items = context.history_items[:, -self.history_len :].long()
        history_rewards = context.history_rewards[:, -self.history_len :].float()
        with torch.no_grad(), torch_threads(self.n_threads):
            return self._forward_last(history_items, history_rewards, items.long())
