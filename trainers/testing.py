"""A tiny generative world with a known reward, for testing what the trainers' math claims.

Users belong to one of a few taste clusters, items to a cluster too. The logging policy picks
items the user's cluster likes and that are *appealing* (popular), but an item's reward depends
on its *quality*, drawn independently of appeal, plus a bonus for matching the user's cluster.
So behaviour cloning learns "appealing in my cluster", while reward-aware training can learn
"good in my cluster": the gap between them is what exp-SFT, A-SFT and PPO should close. The
true reward is available as a `RewardFn`, and a deliberately mis-specified one rewards the
worst items, to show reward hacking. `NoisyEnsemble` wraps any reward function into a reward
ensemble whose members share per-item errors (an over-fitted ensemble, for DPO/IPO and PPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.data import TensorData, sequence_data
from trainers.protocols import Context


@dataclass
class ToyWorldConfig:
    n_users: int = 300
    n_items: int = 60
    n_clusters: int = 4
    min_length: int = 12
    max_length: int = 20
    # Logging policy: log-odds bonus for the user's cluster, and weight of item appeal.
    cluster_affinity: float = 2.0
    appeal_scale: float = 1.0
    # Reward = base + quality_scale·quality + cluster_bonus·[same cluster] + noise.
    base_reward: float = 3.0
    quality_scale: float = 1.5
    cluster_bonus: float = 0.5
    noise: float = 0.3
    seed: int = 0


class ToyWorld:
    """Users, items, a logging policy and the true reward (see module docstring).

    Ids follow the trainers' convention: users 1..n_users, items 1..n_items, 0 = padding.
    """

    def __init__(self, config: ToyWorldConfig | None = None) -> None:
        self.config = config = config or ToyWorldConfig()
        generator = torch.Generator().manual_seed(config.seed)
        self.item_cluster = torch.cat(
            [torch.tensor([-1]), torch.arange(config.n_items) % config.n_clusters]
        )
        self.user_cluster = torch.cat(
            [torch.tensor([-1]), torch.randint(config.n_clusters, (config.n_users,),
                                               generator=generator)]
        )
        self.quality = torch.cat([torch.zeros(1), torch.rand(config.n_items, generator=generator)
                                  * 2 - 1])
        self.appeal = torch.cat([torch.zeros(1), torch.randn(config.n_items, generator=generator)])
        self._generator = generator

    def true_reward(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        """Expected reward of each candidate for each user: a `RewardFn`, [B, K]."""
        config = self.config
        same = self.item_cluster[items] == self.user_cluster[context.users][:, None]
        return (
            config.base_reward + config.quality_scale * self.quality[items]
            + config.cluster_bonus * same.float()
        )

    def misspecified_reward(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        """A reward model that is right about the cluster but has quality backwards."""
        config = self.config
        same = self.item_cluster[items] == self.user_cluster[context.users][:, None]
        return (
            config.base_reward - config.quality_scale * self.quality[items]
            + config.cluster_bonus * same.float()
        )

    def logging_logits(self, users: torch.Tensor) -> torch.Tensor:
        """Log-weights of the logging policy over items [U, n_items + 1] (column 0 = -inf)."""
        config = self.config
        same = self.item_cluster[None, :] == self.user_cluster[users][:, None]
        logits = config.cluster_affinity * same.float() + config.appeal_scale * self.appeal[None]
        logits[:, 0] = float("-inf")
        return logits

    def generate(self) -> TensorData:
        """Logged sequences: items/rewards [n_users, max_length], left-padded; row i = user i+1.

        Each user draws items without repetition from the logging policy; the observed reward
        is the true reward plus Gaussian noise.
        """
        config = self.config
        users = torch.arange(1, config.n_users + 1)
        lengths = torch.randint(config.min_length, config.max_length + 1, (config.n_users,),
                                generator=self._generator)
        # Gumbel top-k = sampling without replacement from softmax(logits).
        logits = self.logging_logits(users)
        uniform = torch.rand(logits.shape, generator=self._generator).clamp(1e-12, 1 - 1e-12)
        order = (logits - (-uniform.log()).log()).argsort(dim=1, descending=True)
        items = torch.zeros(config.n_users, config.max_length, dtype=torch.long)
        for row, length in enumerate(lengths.tolist()):
            items[row, config.max_length - length :] = order[row, :length]
        context = Context(users, items, torch.zeros(items.shape))
        mean = self.true_reward(context, items)
        noise = config.noise * torch.randn(items.shape, generator=self._generator)
        rewards = torch.where(items != 0, mean + noise, torch.zeros(()))
        return {**sequence_data(items, rewards), "users": users}

    def contexts(self, data: TensorData) -> Context:
        """Each user's full logged history as a `Context` (for evaluating the next item)."""
        return Context(data["users"], data["items"], data["rewards"])


def top_k_true_reward(
    world: ToyWorld, scores: torch.Tensor, context: Context, k: int = 10
) -> torch.Tensor:
    """Per-user mean true reward of the top-k items of `scores` (history already masked)."""
    top = scores.topk(k, dim=1).indices
    return world.true_reward(context, top).mean(1)


def expected_reward(
    log_policy: torch.Tensor, context: Context, reward_fn: object
) -> torch.Tensor:
    """Per-user E_π[R] over the catalog from log π [B, n_items + 1] and a RewardFn."""
    catalog = torch.arange(1, log_policy.shape[1]).expand(log_policy.shape[0], -1)
    rewards = reward_fn(context, catalog)  # type: ignore[operator]
    return (log_policy[:, 1:].exp() * rewards).sum(1)


class NoisyEnsemble:
    """A reward ensemble around a reward function, with per-item errors shared by its members.

    Member m predicts ``reward_fn(context, items) + error[m, item]`` with
    ``error[m] = noise · (sqrt(shared) · c + sqrt(1 − shared) · u_m)``, c and u_m standard normal
    per item: each member is off by ``noise`` on every item, and two members' errors correlate by
    ``shared``. That is how an ensemble fitted on one small log goes wrong: every member saw the
    same few noisy events per item, so they agree on most of their mistakes (Eisenstein et al.
    2023, "Helping or herding?"), and their spread — sqrt(1 − shared) of the error's scale —
    understates the error. An `EnsembleRewardFn`: ``members(context, items) -> [M, B, K]``,
    ``__call__`` their mean.
    """

    def __init__(self, reward_fn: object, n_items: int, n_members: int = 5,
                 noise: float = 1.0, shared: float = 0.8, seed: int = 0) -> None:
        if n_members < 1 or not 0 <= shared <= 1 or noise < 0:
            raise ValueError("need n_members >= 1, shared in [0, 1] and noise >= 0")
        generator = torch.Generator().manual_seed(seed)
        common = torch.randn(1, n_items + 1, generator=generator)
        own = torch.randn(n_members, n_items + 1, generator=generator)
        self.errors = noise * (shared ** 0.5 * common + (1 - shared) ** 0.5 * own)
        self.errors[:, 0] = 0.0  # padding
        self.reward_fn = reward_fn

    def members(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        truth = self.reward_fn(context, items).float()  # type: ignore[operator]
        return truth[None] + self.errors[:, items]

    def __call__(self, context: Context, items: torch.Tensor) -> torch.Tensor:
        return self.members(context, items).mean(0)
