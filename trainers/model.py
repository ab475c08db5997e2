"""The policy: a causal transformer over item-id sequences, SASRec's block or HSTU's.

Item embeddings are tied to the output layer, so a position's next-item scores are its hidden
state dotted with every item embedding. Training runs every position of a sequence at once
(`hidden_states` on [N, L] items, then `log_probs_at` on the targets); serving scores the last
position (`forward`, the `Scorer` protocol).

Two blocks, chosen by ``ModelConfig.architecture``:
- ``"sasrec"`` (Kang & McAuley 2018): pre-norm softmax self-attention and a GELU MLP;
- ``"hstu"`` (Zhai et al. 2024, "Actions Speak Louder than Words"): one projection
  U, V, Q, K = SiLU(W·LN(x)); pointwise attention A = SiLU(QKᵀ + rab_pos + rab_time) / L_max
  (no softmax, so the weights keep how strongly the history points somewhere, not only where);
  y = W_o(LN(A V) ⊙ U), the update gate U; x + y. No feed-forward layer. The relative biases
  are learned per block: one per distance i − j and one per log-bucket of the time gap
  ⌊ln max(|t_i − t_j|, 1) / 0.301⌋ (HSTU's bucketing, 128 buckets). HSTU measures the gap from
  the *next* event's time; here from the attending event's own time, because a serving
  `Context` holds only past events. Without timestamps the time bias is left out.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainers.protocols import Context, Scorer


@dataclass
class ModelConfig:
    """Shape of the policy. Defaults are SASRec's ML-1M settings (Kang & McAuley, 2018), with
    hidden 64 instead of 50 so heads divide it evenly."""

    n_items: int = field(metadata={"help": "catalog size: item ids 1..n_items, 0 = padding"})
    hidden: int = field(default=64, metadata={"help": "width of embeddings and hidden states"})
    n_blocks: int = field(default=2, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=2, metadata={"help": "attention heads per block"})
    max_len: int = field(default=50, metadata={
        "help": "positions: longer histories keep their latest max_len items"})
    dropout: float = field(default=0.2, metadata={
        "help": "dropout on embeddings, attention and feed-forward outputs"})
    ffn_multiplier: int = field(default=4, metadata={
        "help": "feed-forward width as a multiple of hidden (4x is the transformer default)"})
    architecture: str = field(default="sasrec", metadata={
        "help": "block: 'sasrec' (softmax attention + MLP) or 'hstu' (pointwise SiLU attention, "
                "update gate, relative position and time biases; Zhai et al. 2024)"})
    time_buckets: int = field(default=128, metadata={
        "help": "HSTU: log-buckets of the time gap between two events (HSTU's 128)"})

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.hidden < 1 or self.n_heads < 1 or self.ffn_multiplier < 1:
            raise ValueError("hidden, n_heads and ffn_multiplier must be >= 1")
        if self.hidden % self.n_heads != 0:
            raise ValueError(
                f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.max_len < 1 or self.n_blocks < 1:
            raise ValueError("max_len and n_blocks must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got "
                             f"{self.architecture!r}")
        if self.time_buckets < 1:
            raise ValueError(f"time_buckets must be >= 1, got {self.time_buckets}")


ARCHITECTURES = ("sasrec", "hstu")


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: masked multi-head self-attention, then a GELU MLP.

    The policy's block, and the one other sequence models of the project reuse (the sequence
    reward model). ``forward(x [N, L, hidden], attn_mask)`` takes any mask
    ``scaled_dot_product_attention`` does: boolean (True = may attend) or additive float (e.g.
    ALiBi biases with -inf), broadcastable to [N, n_heads, L, L]. Dropout applies to attention
    weights and to both residual branches in training mode.
    """

    def __init__(
        self, hidden: int, n_heads: int, dropout: float = 0.0, ffn_multiplier: int = 4
    ) -> None:
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, ffn_multiplier * hidden),
            nn.GELU(),
            nn.Linear(ffn_multiplier * hidden, hidden),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        n, length, hidden = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x))
            .view(n, length, 3, self.n_heads, hidden // self.n_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.attn_out(attended.transpose(1, 2).reshape(n, length, hidden)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def time_gap_bucket(gaps: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """HSTU's bucket of a time gap in seconds: ⌊ln max(|gap|, 1) / 0.301⌋, at most n_buckets
    (0.301 = log10 2, so a bucket spans a factor of e^0.301 = 1.35 in the gap)."""
    logs = torch.log(gaps.abs().clamp(min=1).double()) / 0.301
    return logs.long().clamp(0, n_buckets)


class HSTUBlock(nn.Module):
    """HSTU's layer (module docstring): pointwise SiLU attention with the update gate and
    relative position / time biases; ``forward(x [N, L, H], allowed [N, 1, L, L] bool,
    gap_buckets [N, L, L] (`time_gap_bucket` of t_i - t_j) or None)``. Dropout applies to the
    gated output, as in HSTU."""

    def __init__(self, hidden: int, n_heads: int, max_len: int, dropout: float = 0.0,
                 time_buckets: int = 128) -> None:
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.max_len = max_len
        self.time_buckets = time_buckets
        self.input_norm = nn.LayerNorm(hidden)
        self.uvqk = nn.Linear(hidden, 4 * hidden)
        self.attn_norm = nn.LayerNorm(hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        # one bias per distance i - j in [0, max_len) and per time bucket, shared by the heads
        self.position_bias = nn.Parameter(torch.empty(max_len).normal_(std=0.02))
        self.time_bias = nn.Parameter(torch.empty(time_buckets + 1).normal_(std=0.02))

    def relative_bias(self, length: int, gap_buckets: torch.Tensor | None) -> torch.Tensor:
        """rab_pos (+ rab_time when the gaps' buckets are given): [1 or N, L, L]."""
        positions = torch.arange(length, device=self.position_bias.device)
        distance = (positions[:, None] - positions[None, :]).clamp(0, self.max_len - 1)
        bias = self.position_bias[distance][None]
        if gap_buckets is not None:
            bias = bias + self.time_bias[gap_buckets]
        return bias

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                gap_buckets: torch.Tensor | None = None) -> torch.Tensor:
        n, length, hidden = x.shape
        u, v, q, k = F.silu(self.uvqk(self.input_norm(x))).chunk(4, dim=-1)
        heads = (n, length, self.n_heads, hidden // self.n_heads)
        q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))  # [N, heads, L, d]
        scores = q @ k.transpose(-1, -2) + self.relative_bias(length, gap_buckets)[:, None]
        # SiLU, not softmax: divided by the longest history so the scale does not depend on
        # how many items a row has; masked keys contribute exactly zero
        weights = F.silu(scores).masked_fill(~allowed, 0.0) / self.max_len
        attended = (weights @ v).transpose(1, 2).reshape(n, length, hidden)
        return x + self.attn_out(self.drop(self.attn_norm(attended) * u))


class SequentialRecommender(nn.Module):
    """Causal next-item transformer with tied item embeddings.

    `forward(context)` returns scores [B, n_items + 1] for the item after each history; column 0
    (the padding item) is set to -inf so that any ranking or softmax ignores it. History items are
    NOT masked here (`trainers.policy_scores` does that for evaluation).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.input_drop = nn.Dropout(config.dropout)
        blocks: list[nn.Module]
        if config.architecture == "hstu":
            blocks = [HSTUBlock(config.hidden, config.n_heads, config.max_len, config.dropout,
                                config.time_buckets) for _ in range(config.n_blocks)]
        else:
            blocks = [TransformerBlock(config.hidden, config.n_heads, config.dropout,
                                       config.ffn_multiplier) for _ in range(config.n_blocks)]
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(config.hidden)
        self._init_weights()

    def _init_weights(self) -> None:
        # Small normal init as in GPT-2 / HSTU; embeddings at 1/sqrt(hidden) keep the initial
        # logits near zero, so the first softmax is close to uniform over the catalog.
        std = 1.0 / math.sqrt(self.config.hidden)
        nn.init.normal_(self.item_embedding.weight, std=std)
        nn.init.normal_(self.position_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for block in self.blocks:
            if isinstance(block, HSTUBlock):
                linears = [block.uvqk, block.attn_out]
            else:
                assert isinstance(block, TransformerBlock)
                linears = [block.qkv, block.attn_out, block.ffn[0], block.ffn[2]]
            for linear in linears:
                assert isinstance(linear, nn.Linear)
                nn.init.normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def hidden_states(self, items: torch.Tensor,
                      timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state after each position of left-padded item sequences [N, L] -> [N, L, H].

        Sequences longer than `max_len` keep their last `max_len` items. Position embeddings count
        from the right end (the latest item is always the last position), so a history's encoding
        does not depend on how much padding it carries. ``timestamps`` [N, L] (each item's time)
        feed HSTU's time bias; the SASRec block ignores them.
        """
        items = items[:, -self.config.max_len :]
        length = items.shape[1]
        first = self.config.max_len - length
        positions = torch.arange(first, self.config.max_len, device=items.device)
        x = self.item_embedding(items) * math.sqrt(self.config.hidden)
        x = self.input_drop(x + self.position_embedding(positions))
        is_item = items != 0
        # Causal attention to real items only; every position may also attend to itself, so rows
        # that are all padding still have one key and never produce NaN.
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=items.device)
        attn_mask = (causal & is_item[:, None, :]) | diagonal
        attn_mask = attn_mask[:, None, :, :]  # broadcast over heads
        if self.config.architecture == "hstu":
            buckets = None
            if timestamps is not None:
                times = timestamps[:, -self.config.max_len :]
                # t_i - t_j: attending event i, key j (j <= i where the mask allows)
                buckets = time_gap_bucket(times[:, :, None] - times[:, None, :],
                                          self.config.time_buckets)
            for block in self.blocks:
                x = block(x, attn_mask, buckets)
        else:
            for block in self.blocks:
                x = block(x, attn_mask)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item (padding column included, not masked) [..., n_items + 1]."""
        return hidden @ self.item_embedding.weight.T

    def forward(self, context: Context) -> torch.Tensor:
        """`Scorer`: next-item scores [B, n_items + 1]; column 0 is -inf."""
        hidden = self.hidden_states(context.history_items, context.history_timestamps)[:, -1]
        scores = self.logits(hidden)
        scores[:, 0] = float("-inf")
        return scores


def _in_eval_batches(model: SequentialRecommender, context: Context, batch_size: int,
                     compute: Callable[[Context], torch.Tensor]) -> list[torch.Tensor]:
    """`compute` on `batch_size` users at a time in eval mode (restored after), float32 on the
    CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return [compute(context.index(slice(start, start + batch_size)).to(device)).float().cpu()
                for start in range(0, len(context), batch_size)]
    finally:
        model.train(was_training)


@torch.no_grad()
def policy_scores(
    model: SequentialRecommender,
    context: Context,
    exclude_history: bool = True,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Catalog scores of a trained policy for evaluation, [B, n_items + 1] on the CPU.

    Runs in eval mode (no dropout), in chunks of `batch_size` users. Column 0 is -inf and, with
    `exclude_history`, so is every item already in the user's history: a ranking of the result is
    the policy's recommendation list. The result is dense, 4 * B * n_items bytes (400 GB for 10^5
    users at 10^6 items): for large catalogs rank `policy_user_states` against the item
    embeddings instead (`evaluators.ranking_metrics_streaming` does it item chunk by chunk).
    """
    def masked_scores(rows: Context) -> torch.Tensor:
        scores = model(rows)
        if exclude_history:
            scores = scores.scatter(1, rows.history_items, float("-inf"))
        return scores

    chunks = _in_eval_batches(model, context, batch_size, masked_scores)
    if not chunks:
        return torch.empty(0, model.config.n_items + 1)
    return torch.cat(chunks)


@torch.no_grad()
def policy_user_states(
    model: SequentialRecommender,
    context: Context,
    batch_size: int = 1024,
) -> torch.Tensor:
    """The policy's hidden state after each user's history, [B, hidden] float32 on the CPU.

    Its product with ``model.item_embedding.weight`` ([n_items + 1, hidden], row 0 padding) is
    `policy_scores` without the masking, so metrics over a catalog too large for dense scores
    can stream item chunks: ``ranking_metrics_streaming(states, model.item_embedding.weight,
    targets, exclude=history, padding_column=0)``. Eval mode, `batch_size` users at a time.
    """
    chunks = _in_eval_batches(
        model, context, batch_size,
        lambda rows: model.hidden_states(rows.history_items, rows.history_timestamps)[:, -1])
    if not chunks:
        return torch.empty(0, model.config.hidden)
    return torch.cat(chunks)


def frozen_copy(scorer: Scorer, device: str | torch.device = "cpu") -> Scorer:
    """A copy of a torch reference policy in eval mode without gradients (the caller's object
    is left untouched); other scorers are used as given."""
    if not isinstance(scorer, nn.Module):
        return scorer
    frozen = copy.deepcopy(scorer).to(device).eval()
    frozen.requires_grad_(False)
    return frozen


def reference_policy(
    model: Scorer, reference: Scorer | None, resume_from: object, device: str | torch.device
) -> Scorer:
    """π_ref for a trainer: a frozen copy of ``reference``, or of ``model`` as given when there
    is none (normally the SFT policy the run starts from). A resumed run must name it: the model
    handed to a resumed run is overwritten by the checkpoint, and its weights as given are not
    the original run's starting point, so defaulting to them would silently change π_ref."""
    if reference is None and resume_from is not None:
        raise ValueError(
            "resuming a run that uses a reference policy needs reference=... (the policy the "
            "original run started from); the model given to a resumed run is not it"
        )
    return frozen_copy(model if reference is None else reference, device)
