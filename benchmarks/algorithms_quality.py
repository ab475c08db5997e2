"""What each post-training algorithm does to the TRUE reward, on a simulated world (fixed seeds).

The world (`trainers.testing.ToyWorld`) logs items by appeal while rewarding quality, so
behaviour cloning inherits the logging policy's taste. Every policy starts from the same seed;
PPO starts from the SFT policy. For each policy the benchmark scores the top-10 (history
excluded) of fresh sessions of the same users with the world's true reward, and compares it with
SFT's, paired over users, with 95% percentile-bootstrap intervals (evaluators.intervals).
The expected picture: exp-SFT and A-SFT above SFT; PPO against the true reward above those;
PPO against a mis-specified reward model (quality backwards) raising that model's score while
the true reward falls -- reward hacking.

    python benchmarks/algorithms_quality.py [--seed 0] [--threads 2]

The last line is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.intervals import mean_interval  # noqa: E402
from trainers import (  # noqa: E402
    ALGORITHMS,
    Context,
    ModelConfig,
    SequentialRecommender,
    context_data,
    policy_scores,
)
from trainers.testing import ToyWorld, ToyWorldConfig  # noqa: E402


def figure(values: np.ndarray) -> dict[str, float]:
    """Mean with its 95% percentile-bootstrap interval over users (evaluators.intervals); for
    a paired comparison pass the per-user differences."""
    return mean_interval(values, method="percentile").as_dict()


def top10(model: SequentialRecommender, context: Context) -> torch.Tensor:
    return policy_scores(model, context, exclude_history=True).topk(10, dim=1).indices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each SFT-style run")
    parser.add_argument("--ppo-epochs", type=int, default=20, help="passes of PPO over users")
    parser.add_argument("--ppo-lr", type=float, default=1e-3)
    parser.add_argument("--kl-coef", type=float, default=0.01)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    world = ToyWorld(ToyWorldConfig(n_users=1000, n_items=200, n_clusters=5, min_length=15,
                                    max_length=30, seed=args.seed))
    train_data = world.generate()
    fresh = world.generate()  # new sessions of the same users: where policies are scored
    train_context = world.contexts(train_data)
    eval_context = world.contexts(fresh)

    def new_policy() -> SequentialRecommender:
        torch.manual_seed(args.seed)
        return SequentialRecommender(ModelConfig(n_items=world.config.n_items, hidden=64,
                                                 n_blocks=2, n_heads=2, max_len=30, dropout=0.1))

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
        policies[name] = new_policy()
        train(policies[name], train_data, config_class(**settings), **extra)
        seconds[name] = time.perf_counter() - tick
        print(f"trained {name} in {seconds[name]:.1f}s", flush=True)
    sft = policies["sft"]

    # A-SFT with a reward model: here the true reward as R̂ and the SFT policy as π_ref.
    config_class, train = ALGORITHMS["a-sft"]
    tick = time.perf_counter()
    policies["a-sft (true RM, β=0.5)"] = new_policy()
    train(policies["a-sft (true RM, β=0.5)"], train_data, config_class(**sft_settings, beta=0.5),
          reward_fn=world.true_reward, reference=sft)
    seconds["a-sft (true RM, β=0.5)"] = time.perf_counter() - tick

    ppo_config, train_ppo = ALGORITHMS["ppo"]
    ppo_settings = {"lr": args.ppo_lr, "batch_size": 200, "epochs": args.ppo_epochs,
                    "kl_coef": args.kl_coef,
                    "group_size": 8, "seed": args.seed, "progress": False}
    for name, reward_fn in (("ppo (true reward)", world.true_reward),
                            ("ppo (mis-specified RM)", world.misspecified_reward)):
        tick = time.perf_counter()
        policies[name] = copy.deepcopy(sft)
        train_ppo(policies[name], context_data(train_context), ppo_config(**ppo_settings),
                  reward_fn=reward_fn, reference=sft)
        seconds[name] = time.perf_counter() - tick
        print(f"trained {name} in {seconds[name]:.1f}s", flush=True)

    true = {name: world.true_reward(eval_context, top10(policy, eval_context)).mean(1).numpy()
            for name, policy in policies.items()}
    misspecified = {
        name: world.misspecified_reward(eval_context, top10(policy, eval_context)).mean(1).numpy()
        for name, policy in policies.items()
    }
    catalog = torch.arange(1, world.config.n_items + 1).expand(len(eval_context), -1)
    unseen_reward = torch.cat([torch.full((len(eval_context), 1), float("-inf")),
                               world.true_reward(eval_context, catalog)], dim=1)
    unseen_reward.scatter_(1, eval_context.history_items, float("-inf"))
    oracle = unseen_reward.topk(10, dim=1).values.mean(1).numpy()
    print(f"world: {world.config.n_users} users, {world.config.n_items} items, "
          f"{int((train_data['items'] != 0).sum())} logged events; scored on fresh sessions")
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
