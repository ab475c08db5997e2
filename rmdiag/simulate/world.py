"""`World`: a simulated world that generates logs and knows the true reward (an oracle)."""

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import scipy.cluster.vq

from rmdiag.simulate.config import SimulationConfig
from rmdiag.simulate.hashing import (
    STREAM_HOLDOUT_ITEMS,
    STREAM_HOLDOUT_NOISE,
    STREAM_MISSPECIFIED,
    STREAM_NOISE,
    hash_normal,
    hash_uniform,
    stream_key,
)
from rmdiag.simulate.model import (
    behaviour_sequences,
    block_users,
    event_timestamps,
    expected_reward,
    latent_utility,
    observe,
    recent_items,
    summed_recent_directions,
)
from rmdiag.simulate.parameters import WorldParameters, draw_parameters
from rmdiag.simulate.rejection import RejectionSampler

if TYPE_CHECKING:  # torch is imported where tensors are made: `rmdiag simulate` never needs it
    import torch


class _ContextLike(Protocol):
    users: "torch.Tensor"
    history_items: "torch.Tensor"
    history_rewards: "torch.Tensor"


class World:
    """A simulated world: generates logs, and knows the true expected reward of any item.

    Build one from a config (`World(SimulationConfig(...))`) or fit one to a real log
    (`rmdiag.simulate.fit.world_from_interactions(table)`). World ids are 1..n_users and
    1..n_items.
    """

    def __init__(
        self, config: SimulationConfig | None = None, *, parameters: WorldParameters | None = None,
        rejection_sampling: bool = False,
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self.parameters = parameters if parameters is not None else draw_parameters(self.config)
        self.seed = int(self.config.seed)
        # rejection_sampling: draw the behaviour policy's sequences by rejection
        # (`rmdiag.simulate.rejection`), O(events) per user instead of O(n_items): the same
        # distribution of logs, other draws. For catalogs of ~10^5 items and more.
        self.sampler = RejectionSampler(self.parameters) if rejection_sampling else None
        # Raw ids of the real log a fitted world came from (index = world id); None otherwise.
        self.raw_user_ids: np.ndarray | None = None
        self.raw_item_ids: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.parameters.n_users

    @property
    def n_items(self) -> int:
        return self.parameters.n_items

    @property
    def end_time(self) -> int:
        """The last timestamp any logged event can have."""
        return int(self.parameters.active_end[1:].max())

    # --- logs ---------------------------------------------------------------------------------

    def generate(self, *, with_expected: bool = False) -> pa.Table:
        """The whole log: user_id, item_id, timestamp (int64), reward (float64).

        Ordered by user, then timestamp (ties keep the sequence order). With
        `with_expected=True` a column `expected_reward` holds each event's true expected
        reward given the user's preceding events (the oracle's value, before noise).
        """
        batch = block_users(self.n_items) if self.sampler is None else 2048
        blocks = list(self.generate_batches(batch, with_expected=with_expected))
        return pa.concat_tables(blocks).combine_chunks()

    def generate_batches(
        self, batch_users: int, *, with_expected: bool = False
    ) -> Iterator[pa.Table]:
        """The log as tables of `batch_users` consecutive users each, in bounded memory.

        Concatenated, they equal `generate()` exactly, whatever the block size.
        """
        if batch_users < 1:
            raise ValueError(f"batch_users must be >= 1, got {batch_users}")
        for first in range(1, self.n_users + 1, batch_users):
            last = min(first + batch_users, self.n_users + 1)
            yield self._generate_block(np.arange(first, last, dtype=np.int64), with_expected)

    def _generate_block(self, users: np.ndarray, with_expected: bool) -> pa.Table:
        params = self.parameters
        items_2d, valid = behaviour_sequences(params, self.seed, users, self.sampler)
        rows, positions = np.nonzero(valid)  # row-major: by user, then sequence position
        flat_users, flat_items = users[rows], items_2d[rows, positions]
        recent = recent_items(items_2d, rows, positions, params.satiation_window)
        recent_directions = summed_recent_directions(params, recent)
        latent = latent_utility(params, self.seed, flat_users, flat_items, recent_directions)
        eps = hash_normal(stream_key(self.seed, STREAM_NOISE), flat_users, positions)
        rewards = observe(params, latent + params.noise * eps)
        timestamps = event_timestamps(params, self.seed, flat_users, positions)
        columns: dict[str, Any] = {
            "user_id": pa.array(flat_users, pa.int64()),
            "item_id": pa.array(flat_items, pa.int64()),
            "timestamp": pa.array(timestamps, pa.int64()),
            "reward": pa.array(rewards, pa.float64()),
        }
        if with_expected:
            columns["expected_reward"] = pa.array(expected_reward(params, latent), pa.float64())
        return pa.table(columns)

    def randomized_exposure(self, n_per_user: int, seed: int) -> pa.Table:
        """Ratings of uniformly random items, the log's schema: a randomized-exposure holdout.

        Each user rates `n_per_user` distinct items drawn uniformly from the items absent from
        their log (fewer if the user has consumed nearly everything). Each rating conditions on
        the user's full logged history (not on the other holdout ratings), and the events are
        stamped after the log's last timestamp, as if collected after the log. `seed` picks
        the items and the noise; the world (and its log) stays the same.
        """
        if n_per_user < 1:
            raise ValueError(f"n_per_user must be >= 1, got {n_per_user}")
        params = self.parameters
        item_key = stream_key(self.seed ^ (seed * 0x2545F4914F6CDD1D), STREAM_HOLDOUT_ITEMS)
        noise_key = stream_key(self.seed ^ (seed * 0x2545F4914F6CDD1D), STREAM_HOLDOUT_NOISE)
        all_items = np.arange(1, self.n_items + 1)
        tables = []
        block = block_users(self.n_items)
        for first in range(1, self.n_users + 1, block):
            users = np.arange(first, min(first + block, self.n_users + 1))
            items_2d, valid = behaviour_sequences(params, self.seed, users, self.sampler)
            consumed = np.zeros((users.size, self.n_items + 1), dtype=bool)
            np.put_along_axis(consumed, np.where(valid, items_2d, 0), True, axis=1)
            keys = hash_uniform(item_key, users[:, None], all_items[None, :])
            keys[consumed[:, 1:]] = np.inf  # consumed items are never drawn
            take = min(n_per_user, self.n_items)
            chosen = np.argsort(keys, axis=1, kind="stable")[:, :take]
            chosen_valid = np.take_along_axis(keys, chosen, axis=1) < np.inf
            counts = chosen_valid.sum(axis=1)
            flat_users = np.repeat(users, counts)
            flat_items = chosen[chosen_valid] + 1
            positions = np.broadcast_to(np.arange(take), chosen.shape)[chosen_valid]
            lengths = valid.sum(axis=1)
            recent = recent_items(items_2d, np.arange(users.size), lengths, params.satiation_window)
            recent_directions = summed_recent_directions(params, recent)
            if recent_directions is not None:
                recent_directions = np.repeat(recent_directions, counts, axis=0)
            latent = latent_utility(params, self.seed, flat_users, flat_items, recent_directions)
            eps = hash_normal(noise_key, flat_users, positions)
            rewards = observe(params, latent + params.noise * eps)
            timestamps = self.end_time + 1 + positions.astype(np.int64)
            tables.append(
                pa.table(
                    {
                        "user_id": pa.array(flat_users, pa.int64()),
                        "item_id": pa.array(flat_items.astype(np.int64), pa.int64()),
                        "timestamp": pa.array(timestamps, pa.int64()),
                        "reward": pa.array(rewards, pa.float64()),
                    }
                )
            )
        return pa.concat_tables(tables).combine_chunks()

    # --- the oracle ---------------------------------------------------------------------------

    def true_reward(self, context: _ContextLike, items: "torch.Tensor") -> "torch.Tensor":
        """E[reward | user, history, item] for each candidate: FloatTensor[B, K] (a RewardFn).

        Exact (closed form over the rating noise). Uses the context's users and the last
        `satiation_window` items of its left-padded history; ids are world ids.
        """
        latent, shape = self._latent_for(context, items)
        expected = expected_reward(self.parameters, latent).reshape(shape)
        import torch

        return torch.from_numpy(expected.astype(np.float32)).to(items.device)

    def sample_reward(
        self, context: _ContextLike, items: "torch.Tensor", rng: np.random.Generator
    ) -> "torch.Tensor":
        """One noisy rating per candidate, drawn from the world's rating model: [B, K].

        For online interaction with the world (an environment, not the log); `rng` supplies
        the noise so repeated calls give fresh draws.
        """
        latent, shape = self._latent_for(context, items)
        noisy = latent + self.parameters.noise * rng.standard_normal(latent.shape)
        rewards = observe(self.parameters, noisy).reshape(shape)
        import torch

        return torch.from_numpy(rewards.astype(np.float32)).to(items.device)

    def _latent_for(
        self, context: _ContextLike, items: "torch.Tensor"
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Latent utility of each (context row, candidate), flat [B * K], and (B, K)."""
        items_np = items.detach().cpu().numpy().astype(np.int64)
        users_np = context.users.detach().cpu().numpy().astype(np.int64)
        history = context.history_items.detach().cpu().numpy().astype(np.int64)
        if items_np.ndim != 2 or users_np.shape[0] != items_np.shape[0]:
            raise ValueError(
                f"expected items [B, K] with B = len(users) = {users_np.shape[0]}, "
                f"got {tuple(items_np.shape)}"
            )
        for name, ids, low, high in (
            ("users", users_np, 1, self.n_users),
            ("items", items_np, 1, self.n_items),
            ("history_items", history, 0, self.n_items),
        ):
            bad = (ids < low) | (ids > high)
            if bad.any():
                raise ValueError(
                    f"{name} must be world ids in {low}..{high}; got {ids[bad].flat[0]}"
                )
        w = self.parameters.satiation_window
        recent = history[:, ::-1][:, :w]  # most recent first; left padding becomes trailing 0s
        if recent.shape[1] < w:
            recent = np.pad(recent, ((0, 0), (0, w - recent.shape[1])))
        k = items_np.shape[1]
        # Summed per context row, then shared by its K candidates (same numbers, K times less work).
        recent_directions = summed_recent_directions(self.parameters, recent)
        if recent_directions is not None:
            recent_directions = np.repeat(recent_directions, k, axis=0)
        latent = latent_utility(
            self.parameters,
            self.seed,
            np.repeat(users_np, k),
            items_np.reshape(-1),
            recent_directions,
        )
        return latent, (items_np.shape[0], k)

    def rarely_exposed(self) -> np.ndarray:
        """Mask over world item ids [n_items + 1] (index 0 False): the rarely exposed tail.

        The `config.tail_share` of items with the lowest behaviour-policy exposure logit: for a
        config world exactly the items that get `tail_exposure`; for a fitted world the items
        the real log exposed least.
        """
        logits = self.parameters.exposure_logits[1:]
        n_tail = int(round(self.config.tail_share * self.n_items))
        mask = np.zeros(self.n_items + 1, dtype=bool)
        mask[1 + np.argsort(logits, kind="stable")[:n_tail]] = True
        return mask

    def item_regions(self, n_regions: int = 10) -> np.ndarray:
        """Region (cluster) of each world item id, int64 [n_items + 1], index 0 unused (0).

        k-means (scipy.cluster.vq.kmeans2, seeded by the world) on the items' latent directions:
        items of one region are alike in taste, so a user who never consumed a region is
        unexplored there. Pass it (mapped to encoded ids) as `item_regions` to
        `rmdiag.split.unexplored_mask`.
        """
        if not 1 <= n_regions <= self.n_items:
            raise ValueError(f"n_regions must be in 1..{self.n_items}, got {n_regions}")
        directions = self.parameters.item_directions[1:]
        _, labels = scipy.cluster.vq.kmeans2(
            directions, n_regions, minit="++", seed=np.random.default_rng(self.seed)
        )
        return np.concatenate([[0], labels]).astype(np.int64)

    def misspecified_reward(
        self,
        tail_bonus: float = 1.5,
        tail_spread: float = 0.0,
        n_members: int = 1,
        seed: int = 0,
    ) -> "MisspecifiedReward":
        """A reward model that is right on explored items and wrong on the rarely exposed tail.

        Member m predicts the true reward plus, on each tail item i, an error
        tail_bonus + tail_spread * N(0, 1) (fixed per (m, i)), clipped to the reward scale:
        the classic failure of a reward model extrapolating where the log has no data.
        Optimizing it hard (PPO) moves a policy toward tail items and lowers the true reward:
        reward hacking with a known answer. With `tail_spread > 0` and several members, the
        ensemble disagrees exactly where it is wrong, so pessimism (mean - kappa * std) can
        detect it. An `EnsembleRewardFn`: `__call__` is the members' mean.
        """
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        members = np.arange(n_members)[:, None]
        items = np.arange(self.n_items + 1)[None, :]
        key = stream_key(self.seed ^ (seed * 0x2545F4914F6CDD1D), STREAM_MISSPECIFIED)
        errors = tail_bonus + tail_spread * hash_normal(key, members, items)
        errors = np.where(self.rarely_exposed()[None, :], errors, 0.0)
        import torch

        return MisspecifiedReward(self, torch.from_numpy(errors.astype(np.float32)))

    def variance_components(self) -> dict[str, float]:
        """Variance of each term of the latent utility over users x items, and of the noise.

        Keys: user_bias, item_quality, interaction, hidden, noise (population variances on
        the latent scale). The satiation term depends on the history and is left out.
        """
        p = self.parameters
        users, item_factors = p.user_factors[1:], p.item_factors[1:]
        cov_u = users.T @ users / users.shape[0]
        cov_i = item_factors.T @ item_factors / item_factors.shape[0]
        mean_dot = float(users.mean(0) @ item_factors.mean(0))
        return {
            "user_bias": float(np.var(p.user_bias[1:])),
            "item_quality": float(np.var(p.item_bias[1:])),
            "interaction": float(np.sum(cov_u * cov_i) - mean_dot**2),
            "hidden": p.hidden_scale**2,
            "noise": p.noise**2,
        }

    # --- semi-synthetic worlds ----------------------------------------------------------------


class MisspecifiedReward:
    """The world's true reward plus a fixed per-(member, item) error (see
    `World.misspecified_reward`); an `EnsembleRewardFn` in world ids."""

    def __init__(self, world: World, item_errors: "torch.Tensor") -> None:
        self.world = world
        self.item_errors = item_errors  # [M, n_items + 1]

    def members(self, context: _ContextLike, items: "torch.Tensor") -> "torch.Tensor":
        """FloatTensor[M, B, K]: each member's prediction."""
        truth = self.world.true_reward(context, items)
        errors = self.item_errors.to(items.device)[:, items]
        low, high = self.world.parameters.low, self.world.parameters.high
        return (truth[None] + errors).clamp(low, high)

    def __call__(self, context: _ContextLike, items: "torch.Tensor") -> "torch.Tensor":
        return self.members(context, items).mean(0)
