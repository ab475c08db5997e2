"""What each post-training algorithm does to the TRUE reward, on a simulated world (fixed seeds).

The world (`trainers.testing.ToyWorld`) logs items by appeal while rewarding quality, so
behaviour cloning inherits the logging policy's taste. Every policy starts from the same seed;
PPO starts from the SFT policy. For each policy the benchmark scores the top-10 (history
excluded) of fresh sessions of the same users with the world's true reward, and compares it with
SFT's, paired over users, with 95% percentile-bootstrap intervals (evaluators.intervals).
The expected picture: exp-SFT and A-SFT above SFT; PPO against the true reward above those;
PPO against a mis-specified reward model (quality backwards) raising that model's score while
the true reward falls -- reward hacking.

With `--world rmdiag` the same study runs on the project's own simulator (`rmdiag.simulate.World`,
1,000 users x 250 items, MovieLens-like defaults otherwise), through the data layer: the generated
log is validated and encoded (`rmdiag.data`), split leave-last-out (`rmdiag.split`) and turned
into trainer tensors by `rmdiag.policies.policy_data`, as `rmdiag run` does: the policies train on
each user's last training events and are scored at each user's held-out last event, from the
whole history before it. The world's exact oracle (`World.true_reward`) and its tail-wrong reward
model (`World.misspecified_reward`) take world ids, so both are seen through the log's id encoding
(`rmdiag.policies.EncodedReward`); the catalog is the items the log contains. In both worlds a
policy's figure is `rmdiag.policies.slate_value` of its top-10 undiscounted (gamma = 1): the plain
mean reward of the ten items. That reward model is right off the tail and the truth + 1.5 on it, so
the share of tail items in each top-10 is reported too (benchmarks/RESULTS.md: there the true
reward of PPO against it does not fall below SFT's; it falls short of PPO on the truth).

    python benchmarks/algorithms_quality.py [--world toy|rmdiag] [--seed 0] [--threads 2]

The last line is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.intervals import mean_interval  # noqa: E402
from rmdiag.policies import (  # noqa: E402
    EncodedReward,
    PolicyConfig,
    new_policy,
    policy_data,
    slate_value,
)
from trainers import (  # noqa: E402
    ALGORITHMS,
    Context,
    RewardFn,
    SequentialRecommender,
    context_data,
    policy_scores,
)
from trainers.data import TensorData  # noqa: E402
from trainers.testing import ToyWorld, ToyWorldConfig  # noqa: E402

# Policy history length (positions of the transformer), shared by both worlds.
MAX_LEN = 30


@dataclass
class Study:
    """What the study needs from a world, in the ids the policies use (items 1..n_items).

    `train_data`: sequence data with each row's user (`users`), what every SFT-style run trains
    on; `train_context`: the histories PPO rolls out from; `eval_context`: the histories the
    policies are scored at (every item in them is excluded from the top-10); `true_reward` and
    `misspecified_reward`: RewardFns in those ids; `tail`: optional mask over item ids [n_items + 1]
    of the items the mis-specified model is wrong on (their share of each top-10 is reported).
    """

    description: str
    n_items: int
    train_data: TensorData
    train_context: Context
    eval_context: Context
    true_reward: RewardFn
    misspecified_reward: RewardFn
    tail: torch.Tensor | None = None
    facts: dict[str, object] = field(default_factory=dict)


def toy_study(seed: int) -> Study:
    """`trainers.testing.ToyWorld`: train on one logged session per user, score on a fresh one."""
    world = ToyWorld(ToyWorldConfig(n_users=1000, n_items=200, n_clusters=5, min_length=15,
                                    max_length=MAX_LEN, seed=seed))
    train_data = world.generate()
    fresh = world.generate()  # new sessions of the same users: where policies are scored
    return Study(
        description=(f"world: {world.config.n_users} users, {world.config.n_items} items, "
                     f"{int((train_data['items'] != 0).sum())} logged events; "
                     "scored on fresh sessions"),
        n_items=world.config.n_items,
        train_data=train_data,
        train_context=world.contexts(train_data),
        eval_context=world.contexts(fresh),
        true_reward=world.true_reward,
        misspecified_reward=world.misspecified_reward,
    )


def rmdiag_study(seed: int) -> Study:
    """`rmdiag.simulate.World` through the data layer: encode, leave-last-out, `policy_data`.

    Every training event is a target once (each user's training events in windows of MAX_LEN
    + 1, as `rmdiag run` trains); PPO rolls out from each user's whole training history (the
    contexts of the validation events, each user's second-last) and the policies are scored at
    the held-out last event from the whole history before it, so every item the user consumed
    is excluded from the top-10 (the model itself reads the last MAX_LEN).
    """
    from rmdiag.data import encode, validate
    from rmdiag.simulate import SimulationConfig, World
    from rmdiag.split import leave_last_out

    # 1,000 users x 250 items, ~25 events each (about the toy world's size); the log-sd of the
    # lengths is lowered from 0.8 to 0.5 so that no user has consumed nearly the whole catalog
    # (the longest has ~120 of 250 items): every user keeps at least 10 unseen items to score.
    config = SimulationConfig(n_users=1000, n_items=250, mean_events=25.0, length_sigma=0.5,
                              seed=seed)
    world = World(config)
    source = "<simulated world>"
    log = encode(validate(world.generate(), source), source=source)
    split = leave_last_out(log)
    data = policy_data(split, MAX_LEN)
    # policy_data trains on users with >= 2 training events and leave_last_out holds out events
    # only of users with >= 3 (the world gives each at least 5): the study uses every user.
    trained_users = len(torch.unique(data.train["users"]))
    if {trained_users, len(data.valid), len(data.test)} != {log.n_users}:
        raise ValueError("some user has fewer than 3 events: not every user is trained and scored")
    train_data = data.train
    train_context = data.valid.context  # each user's whole training history

    tail_items = world.rarely_exposed()[log.item_ids]  # over encoded ids; padding maps to 0
    n_tail_events = int(tail_items[log.items].sum())
    tail = torch.from_numpy(tail_items)
    n_trained = int((train_data["items"] != 0).sum())
    return Study(
        description=(
            f"world: rmdiag.simulate.World (seed {seed}), {log.n_users} users, {log.n_items} of "
            f"{world.n_items} items logged (the catalog), {len(log)} logged events "
            f"({len(split.train)} train, {n_trained} in the training sequences of length "
            f"<= {MAX_LEN + 1}); {int(tail.sum())} tail items with "
            f"{n_tail_events} events; scored at each user's held-out last event "
            f"({len(split.test)} users)"
        ),
        n_items=log.n_items,
        train_data=train_data,
        train_context=train_context,
        eval_context=data.test.context,
        true_reward=EncodedReward(world.true_reward, log.user_ids, log.item_ids),
        misspecified_reward=EncodedReward(world.misspecified_reward(), log.user_ids,
                                          log.item_ids),
        tail=tail,
        facts={"world": "rmdiag", "users": log.n_users, "items": log.n_items,
               "world_items": world.n_items, "events": len(log),
               "tail_items": int(tail.sum())},
    )


WORLDS: dict[str, Callable[[int], Study]] = {"toy": toy_study, "rmdiag": rmdiag_study}


def figure(values: np.ndarray) -> dict[str, float]:
    """Mean with its 95% percentile-bootstrap interval over users (evaluators.intervals); for
    a paired comparison pass the per-user differences."""
    return mean_interval(values, method="percentile").as_dict()


def top10(model: SequentialRecommender, context: Context) -> torch.Tensor:
    return policy_scores(model, context, exclude_history=True).topk(10, dim=1).indices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="toy",
                        help="trainers.testing.ToyWorld (toy) or rmdiag.simulate.World (rmdiag)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each SFT-style run")
    parser.add_argument("--ppo-epochs", type=int, default=20, help="passes of PPO over users")
    parser.add_argument("--ppo-lr", type=float, default=1e-3)
    parser.add_argument("--kl-coef", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    study = WORLDS[args.world](args.seed)
    train_data, train_context, eval_context = (study.train_data, study.train_context,
                                               study.eval_context)
    seen = torch.zeros(len(eval_context), study.n_items + 1).scatter_(
        1, eval_context.history_items, 1.0)[:, 1:].sum(1)
    if bool((study.n_items - seen < 10).any()):
        raise ValueError("some evaluation user has fewer than 10 unseen items to recommend")

    # hidden 64, 2 blocks, 2 heads (PolicyConfig's defaults), dropout 0.1, seeded by --seed
    policy_config = PolicyConfig(dropout=0.1, seed=args.seed)

    def fresh_policy() -> SequentialRecommender:
        return new_policy(study.n_items, MAX_LEN, policy_config)

    sft_settings = {"lr": 3e-3, "batch_size": 128, "epochs": args.epochs, "seed": args.seed,
                    "progress": False}
    runs = {
        "sft": ("sft", sft_settings, {}),
        "rw-bc": ("rw-bc", sft_settings, {}),
        "exp-sft (λ=0.5)": ("exp-sft", {**sft_settings, "lam": 0.5}, {}),
        "a-sft (user mean, β=0.5)": ("a-sft", {**sft_settings, "beta": 0.5}, {}),
    }
    policies: dict[str, SequentialRecommender] = {}
    seconds: dict[str, float] = {}
    for name, (algorithm, settings, extra) in runs.items():
        config_class, train = ALGORITHMS[algorithm]
        tick = time.perf_counter()
        policies[name] = fresh_policy()
        train(policies[name], train_data, config_class(**settings), **extra)
        seconds[name] = time.perf_counter() - tick
        print(f"trained {name} in {seconds[name]:.1f}s", flush=True)
    sft = policies["sft"]

    # A-SFT with a reward model: here the true reward as R̂ and the SFT policy as π_ref.
    config_class, train = ALGORITHMS["a-sft"]
    tick = time.perf_counter()
    policies["a-sft (true RM, β=0.5)"] = fresh_policy()
    train(policies["a-sft (true RM, β=0.5)"], train_data, config_class(**sft_settings, beta=0.5),
          reward_fn=study.true_reward, reference=sft)
    seconds["a-sft (true RM, β=0.5)"] = time.perf_counter() - tick

    ppo_config, train_ppo = ALGORITHMS["ppo"]
    ppo_settings = {"lr": args.ppo_lr, "batch_size": 200, "epochs": args.ppo_epochs,
                    "kl_coef": args.kl_coef,
                    "group_size": 8, "seed": args.seed, "progress": False}
    for name, reward_fn in (("ppo (true reward)", study.true_reward),
                            ("ppo (mis-specified RM)", study.misspecified_reward)):
        tick = time.perf_counter()
        policies[name] = copy.deepcopy(sft)
        train_ppo(policies[name], context_data(train_context), ppo_config(**ppo_settings),
                  reward_fn=reward_fn, reference=sft)
        seconds[name] = time.perf_counter() - tick
        print(f"trained {name} in {seconds[name]:.1f}s", flush=True)

    # The plain mean reward of each top-10 (slate_value undiscounted), per evaluation user.
    true = {name: slate_value(policy, eval_context, study.true_reward, 10, gamma=1.0)
            for name, policy in policies.items()}
    misspecified = {name: slate_value(policy, eval_context, study.misspecified_reward, 10,
                                      gamma=1.0)
                    for name, policy in policies.items()}
    catalog = torch.arange(1, study.n_items + 1).expand(len(eval_context), -1)
    unseen_reward = torch.cat([torch.full((len(eval_context), 1), float("-inf")),
                               study.true_reward(eval_context, catalog)], dim=1)
    unseen_reward.scatter_(1, eval_context.history_items, float("-inf"))
    oracle = unseen_reward.topk(10, dim=1).values.mean(1).numpy()
    print(study.description)
    print(f"{'policy':28s} {'true top-10 reward':>28s} {'vs SFT (paired)':>30s} "
          f"{'mis-specified RM':>10s} {'train s':>8s}")
    summary: dict[str, object] = {}
    for name in policies:
        level = figure(true[name])
        gain = figure(true[name] - true["sft"])
        print(f"{name:28s} {level['value']:.3f} [{level['low']:.3f}, {level['high']:.3f}]"
              f"{'':8s} {gain['value']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]"
              f"{'':6s} {misspecified[name].mean():.3f} {seconds[name]:8.1f}")
        summary[name] = {"true_top10_reward": level, "gain_over_sft": gain,
                         "misspecified_rm_top10": float(misspecified[name].mean())}
    print(f"{'oracle (best 10 unseen items)':28s} {oracle.mean():.3f}")
    if study.tail is not None:
        # Where the mis-specified model is wrong: how much of each top-10 sits there.
        tail_share = {name: float(study.tail[top10(policy, eval_context)].float().mean())
                      for name, policy in policies.items()}
        print("share of tail items in the top-10: " + ", ".join(
            f"{name} {share:.3f}" for name, share in tail_share.items()))
        for name, share in tail_share.items():
            summary[name]["tail_share_top10"] = share  # type: ignore[index]
        # A model wrong only on the tail still ranks the rest right, so what it costs is best
        # read against PPO on the true reward, not against SFT.
        cost = figure(true["ppo (mis-specified RM)"] - true["ppo (true reward)"])
        print(f"PPO (mis-specified RM) vs PPO (true reward), true reward: {cost['value']:+.3f} "
              f"[{cost['low']:+.3f}, {cost['high']:+.3f}]")
        study.facts["ppo_misspecified_vs_ppo_true"] = cost
    best_sft_style = max(("exp-sft (λ=0.5)", "a-sft (user mean, β=0.5)"),
                         key=lambda name: true[name].mean())
    ppo_over = figure(true["ppo (true reward)"] - true[best_sft_style])
    hacked_rm = figure(misspecified["ppo (mis-specified RM)"] - misspecified["sft"])
    hacked_true = figure(true["ppo (mis-specified RM)"] - true["sft"])
    gain_ratio = float((true["ppo (true reward)"] - true["sft"]).mean()
                       / (true[best_sft_style] - true["sft"]).mean())
    print(f"PPO (true reward) over {best_sft_style}: {ppo_over['value']:+.3f} "
          f"[{ppo_over['low']:+.3f}, {ppo_over['high']:+.3f}]; its gain over SFT is "
          f"{gain_ratio:.2f}x that of {best_sft_style}")
    print(f"PPO (mis-specified RM) vs SFT: RM score {hacked_rm['value']:+.3f} "
          f"[{hacked_rm['low']:+.3f}, {hacked_rm['high']:+.3f}], true reward "
          f"{hacked_true['value']:+.3f} [{hacked_true['low']:+.3f}, {hacked_true['high']:+.3f}]")
    print(json.dumps({
        **study.facts,
        "exp_sft_gain": summary["exp-sft (λ=0.5)"]["gain_over_sft"],  # type: ignore[index]
        "a_sft_gain": summary["a-sft (user mean, β=0.5)"]["gain_over_sft"],  # type: ignore[index]
        "a_sft_rm_gain": summary["a-sft (true RM, β=0.5)"]["gain_over_sft"],  # type: ignore[index]
        "ppo_true_over_best_sft_style": ppo_over,
        "ppo_gain_ratio": gain_ratio,
        "ppo_misspecified_rm_gain": hacked_rm,
        "ppo_misspecified_true_gain": hacked_true,
        "oracle_top10_reward": float(oracle.mean()),
        "policies": summary,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
