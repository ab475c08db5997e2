"""Train the policies the decision calls for and score them (DESIGN.md, Algorithms and Evaluation).

What `rmdiag run` does between the decision and the report, usable on its own:

- `policy_data(split, max_len)`: the split's sequences as trainer tensors -- the training
  sequences every trainer consumes, and the validation and test events with each user's whole
  earlier history (the model reads its last `max_len` items; every item in it is excluded from
  the ranking).
- `EncodedReward`: a reward function in a simulated world's ids (its oracle) seen through the
  log's id encoding, so it scores the encoded items the policies rank.
- `train_policy(algorithm, data, config, ...)`: one run of a `trainers.ALGORITHMS` entry. SFT
  trains from scratch with early stopping on validation NDCG@k; every other algorithm
  post-trains a copy of the SFT policy for the same budget of optimizer steps, with SFT as its
  reference policy and the reward ensemble as its reward model when it uses one.
- `score_policy(...)`: per-user NDCG@k, HR@k and MRR of the full-catalog ranking (history
  excluded, ties in expectation), the ensemble judge's slate value and, on a simulated world,
  the true reward of the same slate.
- `sweep_temperature(...)`: λ (exp-SFT), β (A-SFT) or κ (PPO) over a grid, each candidate
  scored on the validation events with an interval; the best is kept.
- `summarize_policies(...)`: figures with intervals over users, on all test targets and on
  high-reward targets, and each policy's paired difference from SFT with Holm-adjusted
  p-values (one family per metric).

Every interval is `evaluators.intervals.mean_interval` over users (BCa bootstrap); paired
differences resample users jointly (`paired_difference`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import trainers
from evaluators import ranking_metrics
from evaluators.intervals import adjust_pvalues, mean_interval, paired_difference
from evaluators.judge import EnsembleJudge
from rmdiag.data import Interactions
from rmdiag.sequences import event_sequences, user_sequences
from rmdiag.split import Split
from trainers import Context, ModelConfig, RewardFn, SequentialRecommender, policy_scores
from trainers.data import TensorData
from trainers.loop import device_problem, drawn_rows
from trainers.model import ARCHITECTURES, frozen_copy
from trainers.sft import a_sft_advantages

# Metrics of every policy, in report order. `judge` and `true_reward` are slate values.
RANKING_METRICS = ("ndcg", "hr", "mrr")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class PolicyConfig:
    """How policies are trained and scored; each field is a `--policy-*` flag of `rmdiag run`."""

    architecture: str = field(default="sasrec", metadata=_help(
        "policy block: 'sasrec' (Kang & McAuley 2018) or 'hstu' (Zhai et al. 2024: pointwise "
        "attention, update gate, relative position and time biases from the log's timestamps)"))
    hidden: int = field(default=64, metadata=_help("policy width (SASRec: 50; 64 so heads divide)"))
    n_blocks: int = field(default=2, metadata=_help("transformer blocks (SASRec's 2)"))
    n_heads: int = field(default=2, metadata=_help("attention heads"))
    dropout: float = field(default=0.2, metadata=_help("dropout (SASRec's 0.2 for ML-1M)"))
    batch_size: int = field(default=128, metadata=_help("rows per optimizer step"))
    lr: float = field(default=1e-3, metadata=_help("AdamW step size of SFT (SASRec's 1e-3)"))
    sft_epochs: float = field(
        default=30.0,
        metadata=_help("most SFT epochs; early stopping on validation NDCG@k, patience 3"),
    )
    post_steps: int = field(
        default=120,
        metadata=_help(
            "optimizer-step budget (data batches) of every post-training run from SFT, the same "
            "for every algorithm so they compare at equal cost"
        ),
    )
    post_lr: float = field(
        default=5e-4,
        metadata=_help("step size of post-training (half of SFT's: it starts trained)"),
    )
    k: int = field(default=10, metadata=_help("cutoff of NDCG@k and HR@k and the judge's slate"))
    high_reward: str = field(
        default="median",
        metadata=_help(
            "high-reward targets: a target's own reward at least this number, or 'median' for "
            "the median training reward (Netflix scored only above-median trajectories)"
        ),
    )
    confidence: float = field(default=0.95, metadata=_help("confidence level of every interval"))
    n_resamples: int = field(default=2000, metadata=_help("bootstrap resamples of users"))
    threads: int = field(default=2, metadata=_help("torch threads for training and scoring"))
    device: str = field(default="cpu", metadata=_help(
        "torch device of policy training ('cpu', 'cuda', 'cuda:N'; under torchrun each rank "
        "takes its LOCAL_RANK GPU); scoring and the reward models stay on the CPU"))
    progress: bool = field(default=True, metadata=_help("tqdm progress bars on stderr"))
    seed: int = field(default=0, metadata=_help("seed of every policy's initialization and run"))

    def __post_init__(self) -> None:
        problems = []
        if min(self.hidden, self.n_blocks, self.n_heads, self.batch_size, self.k) < 1:
            problems.append("hidden, n_blocks, n_heads, batch_size and k must be >= 1")
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture must be one of {ARCHITECTURES}, got "
                            f"{self.architecture!r}")
        if self.hidden % self.n_heads:
            problems.append(f"hidden ({self.hidden}) must be divisible by n_heads")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.post_lr <= 0 or self.sft_epochs <= 0 or self.post_steps < 1:
            problems.append("lr, post_lr and sft_epochs must be > 0 and post_steps >= 1")
        if not 0.5 <= self.confidence < 1 or self.n_resamples < 100:
            problems.append("confidence must be in [0.5, 1) and n_resamples >= 100")
        if self.high_reward != "median":
            try:
                float(self.high_reward)
            except ValueError:
                problems.append(f"high_reward must be a number or 'median', got "
                                f"{self.high_reward!r}")
        if self.threads < 1:
            problems.append("threads must be >= 1")
        device = device_problem(self.device, here=False)  # availability: where it trains
        if device:
            problems.append(device)
        if problems:
            raise ValueError("invalid PolicyConfig: " + "; ".join(problems))


# Temperature of each algorithm the selector can choose: the config field and its grid. λ and β
# are in reward units, so their grids are multiples of the training rewards' standard deviation
# (the exp-SFT paper sweeps λ over a log grid and finds an inverted U); κ multiplies the
# ensemble members' spread, already in reward units. The middle value is the no-sweep default.
TEMPERATURES: dict[str, tuple[str, tuple[float, ...], bool]] = {
    # algorithm: (config field, grid, grid scales with the reward std)
    "exp-sft": ("lam", (0.25, 0.5, 1.0, 2.0, 4.0), True),
    "a-sft": ("beta", (0.25, 0.5, 1.0, 2.0, 4.0), True),
    "ppo": ("pessimism", (0.0, 1.0, 2.0), False),
}


def temperature_grid(algorithm: str, reward_std: float) -> tuple[str, list[float]]:
    """(config field, candidate values) of an algorithm's temperature."""
    name, grid, scaled = TEMPERATURES[algorithm]
    scale = reward_std if scaled and reward_std > 0 else 1.0
    return name, [float(f"{v * scale:.3g}") for v in grid]


def fixed_settings(algorithm: str) -> dict[str, float]:
    """Settings reported with the temperature but not swept: PPO's KL coefficient (its trainer
    default, `trainers.PPOConfig`)."""
    if algorithm != "ppo":
        return {}
    config_class, _ = trainers.ALGORITHMS["ppo"]
    return {"kl_coef": float(next(f.default for f in fields(config_class) if f.name == "kl_coef"))}


def default_temperature(algorithm: str, reward_std: float) -> dict[str, float]:
    """The documented default when there is no sweep: the middle of the grid."""
    if algorithm not in TEMPERATURES:
        return {}
    name, grid = temperature_grid(algorithm, reward_std)
    return {name: grid[len(grid) // 2], **fixed_settings(algorithm)}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class EvalSet:
    """Held-out target events and what scoring them needs, in encoded ids.

    `context` holds each event's whole earlier history (the model reads its last `max_len`);
    `exclude` is that history without the target (a re-consumed target stays rankable), padded
    with -1, for `evaluators.ranking_metrics`.
    """

    context: Context
    targets: np.ndarray
    target_rewards: np.ndarray
    exclude: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class PolicyData:
    """Everything the trainers and the scoring need from a split (see module docstring)."""

    log: Interactions
    train: TensorData
    valid: EvalSet
    test: EvalSet
    reward_std: float
    median_reward: float


def _eval_set(history: Interactions, events: Interactions, timestamps: bool) -> EvalSet:
    longest = int(np.bincount(history.users, minlength=history.n_users + 1).max()) if len(
        history) else 1
    seqs = event_sequences(history, events, max(longest, 1), timestamps=timestamps)
    exclude = np.where(
        (seqs.history_items != 0) & (seqs.history_items != seqs.targets[:, None]),
        seqs.history_items, -1,
    )
    return EvalSet(seqs.context(), seqs.targets, seqs.target_rewards.astype(np.float64), exclude)


def policy_data(split: Split, max_len: int, timestamps: bool = False) -> PolicyData:
    """Trainer tensors from a split: each user's training events cut into windows of `max_len`
    + 1 (every event a target once, `trainers.sequence_windows`), validation events scored from
    the training history and test events from training + validation history. With
    `timestamps` (an HSTU policy, `uses_timestamps`), every history carries its events' times."""
    train = split.train
    longest = int(np.bincount(train.users, minlength=train.n_users + 1).max()) if len(train) else 1
    sequences = user_sequences(train, max(longest, 2), timestamps=timestamps)
    # every training event is a target once: each user's history cut into windows of
    # max_len + 1 (the most recent first), not only the user's last max_len + 1 events
    times = sequences.timestamps
    data = trainers.sequence_windows(
        torch.from_numpy(sequences.items[1:]), torch.from_numpy(sequences.rewards[1:]),
        max_len, users=torch.arange(1, train.n_users + 1),
        timestamps=None if times is None else torch.from_numpy(times[1:]),
    )
    rewards = train.rewards
    return PolicyData(
        log=train,
        train=data,
        valid=_eval_set(train, split.valid, timestamps),
        test=_eval_set(train.concat(split.valid), split.test, timestamps),
        reward_std=float(rewards.std()) if len(rewards) else 1.0,
        median_reward=float(np.median(rewards)) if len(rewards) else 0.0,
    )


class EncodedReward:
    """A reward function in a world's ids, called with the ids of an encoded log.

    `user_ids[u]` / `item_ids[i]` are the world ids of encoded user u / item i (index 0 =
    padding, which stays 0), as `rmdiag.data.Interactions` keeps them. Users, history items and
    candidates are translated; history rewards pass through. Exposes `members` when the wrapped
    function does (an `EnsembleRewardFn`).
    """

    def __init__(self, reward_fn: RewardFn, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        self.reward_fn = reward_fn
        self.user_ids = torch.from_numpy(np.asarray(user_ids, dtype=np.int64))
        self.item_ids = torch.from_numpy(np.asarray(item_ids, dtype=np.int64))
        if hasattr(reward_fn, "members"):
            self.members = self._members

    def translate(self, context: Context, items: torch.Tensor) -> tuple[Context, torch.Tensor]:
        world_context = Context(self.user_ids[context.users], self.item_ids[context.history_items],
                                context.history_rewards)
        return world_context, self.item_ids[items]

    def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        # the reward models run on the CPU (LightGBM reads numpy): a policy training on CUDA
        # hands its tensors over and gets the rewards back on its own device
        return self.reward_fn(*self.translate(context.to("cpu"), items.cpu())).to(items.device)

    def _members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        members = self.reward_fn.members  # type: ignore[attr-defined]
        return members(*self.translate(context.to("cpu"), items.cpu())).to(items.device)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainedPolicy:
    name: str
    algorithm: str
    temperature: dict[str, float]
    model: SequentialRecommender
    train_seconds: float
    steps: int


def reward_model_use(algorithm: str) -> str:
    """How `trainers.ALGORITHMS[algorithm]` uses a reward model, as its Config declares:
    "none", "optional" (A-SFT: the user's mean reward without one) or "required"."""
    config_class, _ = trainers.ALGORITHMS[algorithm]
    return str(config_class.reward_model)


# π_ref's top items over which A-SFT's baseline b(s) = E_π_ref[R̂(s, a)] is taken (renormalized):
# the reward model is then called 20 times per training event instead of once per catalog item.
A_SFT_BASELINE_TOP_K = 20


def a_sft_data(data: PolicyData, sft: TrainedPolicy, reward_fn: RewardFn, config: PolicyConfig,
               overrides: Mapping[str, Any] | None = None,
               top_k: int = A_SFT_BASELINE_TOP_K) -> TensorData:
    """The training tensors with A-SFT's advantages r − b(s) from the reward model and the SFT
    policy, computed once and shared by every point of a β sweep (A does not depend on β; nor
    do the rows a run draws). Only the rows that `train_policy`'s A-SFT runs with `config` and
    `overrides` draw get one: 120 steps of 128 rows need b(s) on 7% of a 222,500-user log."""
    schedule = _config_for("a-sft", _post_settings(config, {}, None, overrides))
    rows = drawn_rows(len(data.train["items"]), schedule)
    return a_sft_advantages(data.train, reward_fn, frozen_copy(sft.model), top_k=top_k,
                            rows=rows)


def _config_for(algorithm: str, settings: Mapping[str, Any]) -> Any:
    config_class, _ = trainers.ALGORITHMS[algorithm]
    names = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in settings.items() if k in names})


def new_policy(n_items: int, max_len: int, config: PolicyConfig) -> SequentialRecommender:
    torch.manual_seed(config.seed)
    return SequentialRecommender(ModelConfig(
        n_items=n_items, hidden=config.hidden, n_blocks=config.n_blocks, n_heads=config.n_heads,
        max_len=max_len, dropout=config.dropout, architecture=config.architecture,
    ))


def uses_timestamps(architecture: str) -> bool:
    """Whether a policy of this architecture reads its histories' times (HSTU's time bias)."""
    return architecture == "hstu"


def validation_hook(data: PolicyData, k: int) -> Callable[[torch.nn.Module], dict[str, float]]:
    """Mean validation NDCG@k of a model (the SFT run's early-stopping metric)."""
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert isinstance(model, SequentialRecommender)
        metrics = _ranking(model, data.valid, k)
        return {f"valid_ndcg@{k}": float(metrics[f"ndcg@{k}"].mean())}
    return evaluate


def train_sft(data: PolicyData, max_len: int, config: PolicyConfig,
              checkpoint: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> TrainedPolicy:
    """The reference policy: behaviour cloning from scratch, early-stopped on validation.
    `overrides` replace fields of the trainer's Config set from `config` (`rmdiag train`'s
    explicit Config flags)."""
    model = new_policy(data.log.n_items, max_len, config)
    rows = int(data.train["items"].shape[0])
    steps_per_epoch = max(1, rows // min(config.batch_size, rows))
    settings = {
        "lr": config.lr, "batch_size": config.batch_size, "epochs": config.sft_epochs,
        "seed": config.seed, "eval_every": steps_per_epoch, "progress": config.progress,
        "device": config.device,
        "early_stopping_metric": f"valid_ndcg@{config.k}", "patience": 3,
        "checkpoint_path": checkpoint, "checkpoint_every": steps_per_epoch if checkpoint else 0,
    } | dict(overrides or {})
    sft_config = _config_for("sft", settings)
    resume = checkpoint if checkpoint and Path(checkpoint).exists() else None
    tick = time.perf_counter()
    result = trainers.ALGORITHMS["sft"][1](
        model, data.train, sft_config, eval_fn=validation_hook(data, config.k),
        resume_from=resume,
    )
    assert isinstance(result.model, SequentialRecommender)
    # back on the CPU, where scoring, the judge and the saved files expect it (a no-op there)
    return TrainedPolicy("sft", "sft", {}, result.model.cpu(), time.perf_counter() - tick,
                         result.steps)


def _post_settings(config: PolicyConfig, temperature: Mapping[str, float],
                   checkpoint: str | None, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The post-training Config fields `train_policy` sets from `config`, the temperature and
    `rmdiag train`'s explicit overrides."""
    return {
        "lr": config.post_lr, "batch_size": config.batch_size, "max_steps": config.post_steps,
        "seed": config.seed, "progress": config.progress, "checkpoint_path": checkpoint,
        "device": config.device,
        "checkpoint_every": max(1, config.post_steps // 4) if checkpoint else 0, **temperature,
    } | dict(overrides or {})


def train_policy(
    algorithm: str,
    data: PolicyData,
    sft: TrainedPolicy,
    config: PolicyConfig,
    temperature: Mapping[str, float] | None = None,
    reward_fn: RewardFn | None = None,
    train_data: TensorData | None = None,
    name: str | None = None,
    checkpoint: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainedPolicy:
    """Post-train a copy of the SFT policy with `algorithm` for `config.post_steps` steps.

    `reward_fn`, with the SFT policy as π_ref, goes to the algorithms whose Config declares a
    use for one (`reward_model_use`). `train_data` replaces the training tensors (e.g. with
    precomputed A-SFT advantages shared by every point of a sweep). `overrides` replace fields
    of the algorithm's Config set from `config` (`rmdiag train`'s explicit Config flags).
    """
    temperature = dict(temperature or {})
    algorithm_config = _config_for(algorithm,
                                   _post_settings(config, temperature, checkpoint, overrides))
    extra: dict[str, Any] = {}
    use = reward_model_use(algorithm)
    if use == "required" and reward_fn is None:
        raise ValueError(f"{algorithm} needs a reward model; none was fitted (--no-audit?)")
    if use != "none" and reward_fn is not None:
        extra["reward_fn"] = reward_fn
    config_class, _ = trainers.ALGORITHMS[algorithm]
    # The SFT policy is π_ref (PPO's and GRPO's KL, DPO's ratios, A-SFT's b(s) -- the last only
    # with a reward model).
    if config_class.uses_reference and (use == "none" or "reward_fn" in extra):
        extra["reference"] = sft.model
    model = copy.deepcopy(sft.model)
    resume = checkpoint if checkpoint and Path(checkpoint).exists() else None
    tick = time.perf_counter()
    result = trainers.ALGORITHMS[algorithm][1](
        model, train_data if train_data is not None else data.train, algorithm_config,
        resume_from=resume, **extra,
    )
    assert isinstance(result.model, SequentialRecommender)
    return TrainedPolicy(name or algorithm, algorithm, temperature, result.model.cpu(),
                         time.perf_counter() - tick, result.steps)


# ---------------------------------------------------------------------------------------------
# Scoring


def _ranking(model: SequentialRecommender, evalset: EvalSet, k: int) -> dict[str, np.ndarray]:
    scores = policy_scores(model, evalset.context, exclude_history=False)
    return ranking_metrics(scores.numpy(), evalset.targets, ks=(k,), exclude=evalset.exclude,
                           ties="expected", padding_column=0)


def score_policy(
    model: SequentialRecommender,
    evalset: EvalSet,
    k: int,
    judge: EnsembleJudge | None = None,
    true_reward: RewardFn | None = None,
) -> dict[str, np.ndarray]:
    """Per-user values of every metric: ndcg@k, hr@k, mrr, and `judge` (the ensemble judge's
    slate value) and `true_reward` (the oracle's value of the same slate) when available."""
    out = dict(_ranking(model, evalset, k))
    if judge is not None:
        result = judge.evaluate(model, evalset.context, true_reward=true_reward)
        out["judge"] = result.per_user
        out["_judge_members"] = result.members
        out["_judge_spread"] = np.array(result.relative_spread)
        if result.true_per_user is not None:
            out["true_reward"] = result.true_per_user
    elif true_reward is not None:
        out["true_reward"] = slate_value(model, evalset.context, true_reward, k)
    return out


def slate_value(model: SequentialRecommender, context: Context, reward_fn: RewardFn,
                k: int, gamma: float = 0.9) -> np.ndarray:
    """Per-user position-discounted mean reward of the top-k (history excluded), the judge's
    slate value under another reward function (used when there is no ensemble)."""
    top = policy_scores(model, context, exclude_history=True).topk(k, dim=1)
    # a user with fewer than k items left gets the shorter slate (as the judge does): the
    # excluded items topk fills it with get weight 0 and are replaced by the row's first item, so
    # that the reward function never sees the padding id
    valid = torch.isfinite(top.values)
    items = torch.where(valid, top.indices, top.indices[:, :1])
    weights = gamma ** torch.arange(items.shape[1], dtype=torch.float64)[None, :] * valid
    return ((reward_fn(context, items).double() * weights).sum(1) / weights.sum(1)).numpy()


def make_judge(reward_fn: RewardFn | None, config: PolicyConfig) -> EnsembleJudge | None:
    """The ensemble judge (slate mode): mean over members of the discounted top-k reward."""
    if reward_fn is None or not hasattr(reward_fn, "members"):
        return None
    return EnsembleJudge(reward_fn, mode="slate", k=config.k, confidence=config.confidence,
                         n_resamples=config.n_resamples, seed=config.seed)  # type: ignore[arg-type]


def high_reward_threshold(data: PolicyData, config: PolicyConfig) -> float:
    if config.high_reward == "median":
        return data.median_reward
    return float(config.high_reward)


def _figure(values: np.ndarray, config: PolicyConfig) -> dict[str, Any]:
    if len(values) < 2:
        return {"value": None, "low": None, "high": None,
                "reason": f"{len(values)} users; an interval needs at least 2"}
    return mean_interval(values, "bca", config.confidence, config.n_resamples,
                         config.seed).as_dict()


def _metric_names(k: int) -> list[str]:
    return [f"ndcg@{k}", f"hr@{k}", "mrr", "judge", "true_reward"]


def summarize_policies(
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    high: np.ndarray,
    config: PolicyConfig,
    reference: str = "sft",
) -> dict[str, dict[str, Any]]:
    """Figures of every policy (`summary.json["policies"]`): each metric over all test users,
    the ranking metrics over users whose target reward is high (`high` mask), and each
    policy's paired difference from `reference` with p-values (paired t-test across users),
    Holm-adjusted within each metric over the policies compared."""
    names = _metric_names(config.k)
    out: dict[str, dict[str, Any]] = {}
    for name, values in per_user.items():
        entry: dict[str, Any] = {m: _figure(values[m], config) for m in names if m in values}
        if "_judge_members" in values:
            members = np.asarray(values["_judge_members"], dtype=np.float64)
            entry["judge"]["members"] = [float(v) for v in members]
            # the judge's own figure: std of the members' values over |their mean|
            entry["judge"]["member_spread"] = float(values["_judge_spread"])
        entry["high_reward"] = {"users": int(high.sum())} | {
            m: _figure(values[m][high], config) for m in names[:3]
        }
        out[name] = entry
    for metric in names:
        compared = [n for n in per_user if n != reference and metric in per_user[n]]
        if not compared or metric not in per_user[reference]:
            continue
        tests = [paired_difference(per_user[n][metric], per_user[reference][metric], "bca",
                                   config.confidence, config.n_resamples, config.seed)
                 for n in compared]
        adjusted = adjust_pvalues([t.p_t for t in tests], "holm")
        for name, test, p_adjusted in zip(compared, tests, adjusted, strict=True):
            out[name].setdefault("vs_sft", {})[metric] = {
                "difference": test.difference.as_dict(), "p_value": float(test.p_t),
                "p_adjusted": float(p_adjusted),
            }
    return out


def sweep_temperature(
    algorithm: str,
    data: PolicyData,
    sft: TrainedPolicy,
    config: PolicyConfig,
    grid: Sequence[float],
    reward_fn: RewardFn | None = None,
    true_reward: RewardFn | None = None,
    train_data: TensorData | None = None,
    fixed: Mapping[str, float] | None = None,
    train: Callable[..., TrainedPolicy] | None = None,
) -> tuple[dict[str, Any], list[TrainedPolicy]]:
    """Train `algorithm` at each temperature of `grid`; score each on the validation events.

    The sweep's metric is NDCG@k on high-reward validation targets (at or above the high-reward
    threshold): what a reward-seeking policy should raise without drifting from what users
    choose. Returns the curve (`summary.json["sweep"][algorithm]`: each point with its interval,
    and the true reward of its validation slate on a simulated world) and the policies, one per
    point; which one wins is `rmdiag.select.choose_temperature`'s call. `fixed` holds settings
    that are not swept (PPO's KL coefficient). `train` replaces `train_policy` (same
    arguments; `rmdiag run` passes one that keeps and reuses each point's policy).
    """
    parameter = TEMPERATURES[algorithm][0]
    threshold = high_reward_threshold(data, config)
    high = data.valid.target_rewards >= threshold
    targets = f"reward >= {threshold:g}"
    if high.sum() < 2:
        high, targets = np.ones(len(data.valid), dtype=bool), "any reward"
    metric = f"ndcg@{config.k}"
    points, policies = [], []
    train = train or train_policy
    for value in grid:
        policy = train(algorithm, data, sft, config, {parameter: value, **(fixed or {})},
                              reward_fn, train_data, name=algorithm)
        scores = _ranking(policy.model, data.valid, config.k)[metric]
        point: dict[str, Any] = {"value": value, metric: _figure(scores[high], config)}
        if true_reward is not None:
            point["true_reward"] = _figure(
                slate_value(policy.model, data.valid.context, true_reward, config.k), config)
        points.append(point)
        policies.append(policy)
    curve = {"parameter": parameter, "metric": metric, "split": "valid", "targets": targets,
             "points": points}
    return curve, policies


def per_user_table(
    log: Interactions,
    evalset: EvalSet,
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    high: np.ndarray,
) -> pa.Table:
    """`per_user.parquet`: one row per (test user, policy), in the user's own ids."""
    users = evalset.context.users.numpy()
    columns: dict[str, list[Any]] = {"user_id": [], "policy": [], "target_item_id": [],
                                     "target_reward": [], "high_reward": []}
    metric_names = sorted({m for v in per_user.values() for m in v if not m.startswith("_")})
    for metric in metric_names:
        columns[metric] = []
    raw_users = [str(u) for u in log.decode_users(users)]
    raw_targets = [str(i) for i in log.decode_items(evalset.targets)]
    for name, values in per_user.items():
        columns["user_id"] += raw_users
        columns["policy"] += [name] * len(users)
        columns["target_item_id"] += raw_targets
        columns["target_reward"] += evalset.target_rewards.tolist()
        columns["high_reward"] += high.tolist()
        for metric in metric_names:
            columns[metric] += (values[metric].tolist() if metric in values
                                else [None] * len(users))
    return pa.table(columns)


def recommendation_examples(
    log: Interactions,
    evalset: EvalSet,
    policies: Mapping[str, SequentialRecommender],
    n_users: int = 3,
    k: int = 5,
    history: int = 5,
) -> list[dict[str, Any]]:
    """A few test users' recent history and each policy's top-k, in the user's own ids."""
    rows = np.linspace(0, len(evalset) - 1, num=min(n_users, len(evalset))).astype(int)
    context = evalset.context.index(torch.from_numpy(rows))
    tops = {name: policy_scores(model, context).topk(k, dim=1).indices.numpy()
            for name, model in policies.items()}
    examples = []
    for position, row in enumerate(rows):
        recent = context.history_items[position].numpy()
        recent = recent[recent != 0][-history:]
        examples.append({
            "user": str(log.decode_users(np.array([context.users[position].item()]))[0]),
            "history": [str(i) for i in log.decode_items(recent)],
            "target": str(log.decode_items(np.array([evalset.targets[row]]))[0]),
            "recommendations": {name: [str(i) for i in log.decode_items(top[position])]
                                for name, top in tops.items()},
        })
    return examples
