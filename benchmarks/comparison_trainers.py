"""The comparison trainers (DPO, IPO, CQL, ReRe-style GRPO) against an over-fitted reward ensemble.

The world is `trainers.testing.ToyWorld` (1,000 users in 5 taste clusters, 200 items; the log
follows item *appeal*, the reward item *quality* plus a cluster bonus; fixed seed). Policies train
on one logged session per user and are scored on a fresh session of the same users: the mean TRUE
reward of each policy's top-10 (history excluded), and the ensemble's score of that same top-10.

The over-fitted ensemble (`trainers.testing.NoisyEnsemble`, 5 members): each member is the true
reward plus a per-item error of standard deviation 1.0 — as large as the spread of the items' true
quality (0.87) — and 80% of that error variance is shared by all members. It stands for an
ensemble fitted on one small log with enough capacity to memorize it: every member saw the same
few noisy events per item, so members agree on most of their mistakes (Eisenstein et al. 2023)
and their spread (population std ≈ 0.4) understates their error (≈ 0.92 for the mean). It is
constructed, not fitted by `rmdiag.rewards`: that keeps the size and the correlation of the
errors known, which is what the study is about. A well-specified control ensemble (per-item error
0.1, nothing shared) is run with DPO too: it separates "DPO follows its reward model" from "DPO
is broken".

Every policy shares the architecture and seed; DPO, IPO and GRPO start from the SFT policy with it
as π_ref; CQL (observed rewards only) and exp-SFT train from the same initialization as SFT. DPO
and IPO draw their pairs by Netflix's interval rejection sampling from the over-fitted ensemble
(z = 1: mean ± one member std must separate). For each policy: gains over SFT in true reward and
in ensemble score, paired over users, and their difference (ensemble gain − true gain, the part
of the claimed gain that is the ensemble's error), with 95% percentile-bootstrap intervals
(`evaluators.intervals`); KL(π ‖ π_SFT) and KL(π ‖ logging policy) over the unseen catalog,
averaged over users; and NDCG@10 of each fresh session's last item from the history before it
(`evaluators.ranking_metrics`, full catalog), the next-item ranking GRPO optimizes.

    python -m benchmarks.comparison_trainers [--seed 0] [--threads 2]

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

from evaluators import ranking_metrics  # noqa: E402
from evaluators.intervals import mean_interval  # noqa: E402
from trainers import (  # noqa: E402
    ALGORITHMS,
    Context,
    ModelConfig,
    SequentialRecommender,
    policy_scores,
)
from trainers.dpo import sample_distinct, select_pairs  # noqa: E402
from trainers.ensemble import reward_interval  # noqa: E402
from trainers.ppo import MASKED_SCORE, exact_kl, masked_log_policy  # noqa: E402
from trainers.testing import NoisyEnsemble, ToyWorld, ToyWorldConfig  # noqa: E402

MAX_LEN = 30  # policy history length, as benchmarks/algorithms_quality.py


def figure(values: np.ndarray) -> dict[str, float]:
    """Mean with its 95% percentile-bootstrap interval over users; for a paired comparison pass
    the per-user differences."""
    return mean_interval(values, method="percentile").as_dict()


def fmt(fig: dict[str, float], sign: bool = False) -> str:
    spec = "+.3f" if sign else ".3f"
    return f"{fig['value']:{spec}} [{fig['low']:{spec}}, {fig['high']:{spec}}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of SFT, exp-SFT and CQL")
    parser.add_argument("--rl-epochs", type=float, default=1.0,
                        help="passes of DPO, IPO and GRPO over the logged events")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    world = ToyWorld(ToyWorldConfig(n_users=1000, n_items=200, n_clusters=5, min_length=15,
                                    max_length=MAX_LEN, seed=args.seed))
    n_items = world.config.n_items
    train_data = world.generate()
    fresh = world.generate()  # new sessions of the same users: where policies are scored
    eval_context: Context = world.contexts(fresh)
    # Next-item ranking: each fresh session's last item from the history before it.
    next_context = Context(fresh["users"], fresh["items"][:, :-1], fresh["rewards"][:, :-1])
    next_items = fresh["items"][:, -1].numpy()
    overfit = NoisyEnsemble(world.true_reward, n_items, n_members=5, noise=1.0, shared=0.8,
                            seed=args.seed + 1)
    control = NoisyEnsemble(world.true_reward, n_items, n_members=5, noise=0.1, shared=0.0,
                            seed=args.seed + 2)

    def new_policy() -> SequentialRecommender:
        torch.manual_seed(args.seed)
        return SequentialRecommender(ModelConfig(n_items=n_items, hidden=64, n_blocks=2,
                                                 n_heads=2, max_len=MAX_LEN, dropout=0.1))

    sft_settings = {"lr": 3e-3, "batch_size": 128, "epochs": args.epochs, "seed": args.seed,
                    "progress": False}
    rl_settings = {"batch_size": 256, "epochs": args.rl_epochs, "seed": args.seed,
                   "progress": False}
    policies: dict[str, SequentialRecommender] = {}
    seconds: dict[str, float] = {}

    def run(name: str, algorithm: str, start: SequentialRecommender | None,
            settings: dict[str, object], **inputs: object) -> None:
        config_class, train = ALGORITHMS[algorithm]
        tick = time.perf_counter()
        model = new_policy() if start is None else copy.deepcopy(start)
        train(model, train_data, config_class(**settings), **inputs)
        policies[name], seconds[name] = model, time.perf_counter() - tick
        print(f"trained {name} in {seconds[name]:.1f}s", flush=True)

    run("sft", "sft", None, sft_settings)
    sft = policies["sft"]
    run("exp-sft (λ=0.5)", "exp-sft", None, {**sft_settings, "lam": 0.5})
    run("cql (α=1, τ=1)", "cql", None, {**sft_settings, "alpha": 1.0})
    run("dpo (over-fitted RM)", "dpo", sft, rl_settings, reward_fn=overfit, reference=sft)
    run("ipo (over-fitted RM)", "ipo", sft, rl_settings, reward_fn=overfit, reference=sft)
    run("dpo (control RM)", "dpo", sft, rl_settings, reward_fn=control, reference=sft)
    run("grpo (ReRe reward)", "grpo", sft, rl_settings, reference=sft)

    # Pairs the rejection sampling keeps, from the SFT policy on the evaluation histories.
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        sft_log_policy = masked_log_policy(sft.eval(), eval_context, True)
        candidates = sample_distinct(sft_log_policy, 8, generator)
        kept = {}
        for label, ensemble in (("over-fitted", overfit), ("control", control)):
            _, low, high = reward_interval(ensemble, eval_context, candidates, 1.0)
            kept[label] = float(select_pairs(candidates, low, high)[2].float().mean())
        catalog = torch.arange(1, n_items + 1).expand(len(eval_context), -1)
        errors = (overfit(eval_context, catalog) - world.true_reward(eval_context, catalog))
        spread = overfit.members(eval_context, catalog).std(0, unbiased=False)
        logging = world.logging_logits(eval_context.users)
        logging = logging.scatter(1, eval_context.history_items, float("-inf"))
        log_logging = torch.log_softmax(logging.clamp(min=MASKED_SCORE), dim=1)

    true, scored, kl_sft, kl_logging, ndcg = {}, {}, {}, {}, {}
    for name, policy in policies.items():
        next_scores = policy_scores(policy, next_context, exclude_history=True).numpy()
        ndcg[name] = ranking_metrics(next_scores, next_items, ks=(10,),
                                     padding_column=0)["ndcg@10"]
        top = policy_scores(policy, eval_context, exclude_history=True).topk(10, dim=1).indices
        true[name] = world.true_reward(eval_context, top).mean(1).numpy()
        scored[name] = overfit(eval_context, top).mean(1).numpy()
        with torch.no_grad():
            log_policy = masked_log_policy(policy.eval(), eval_context, True)
        kl_sft[name] = exact_kl(log_policy, sft_log_policy).numpy()
        kl_logging[name] = exact_kl(log_policy, log_logging).numpy()

    print(f"world: {world.config.n_users} users, {n_items} items, "
          f"{int((train_data['items'] != 0).sum())} logged events; scored on fresh sessions")
    rmse = float(errors.pow(2).mean().sqrt())
    print(f"over-fitted ensemble: RMSE of its mean vs the truth {rmse:.3f}"
          f", mean member spread {float(spread.mean()):.3f}; share of SFT-sampled candidate "
          f"groups (K = 8) with a kept pair at z = 1: {kept['over-fitted']:.3f} (control "
          f"ensemble: {kept['control']:.3f})")
    header = (f"{'policy':22s} {'true top-10':>22s} {'true gain vs SFT':>25s} "
              f"{'RM gain vs SFT':>25s} {'RM gain − true gain':>25s} {'KL to SFT':>10s} "
              f"{'KL to log':>10s} {'NDCG@10 next':>13s} {'s':>6s}")
    print(header)
    summary: dict[str, dict[str, object]] = {}
    for name in policies:
        level = figure(true[name])
        true_gain = figure(true[name] - true["sft"])
        rm_gain = figure(scored[name] - scored["sft"])
        gap = figure((scored[name] - scored["sft"]) - (true[name] - true["sft"]))
        kl = figure(kl_sft[name])
        kl_log = figure(kl_logging[name])
        next_ndcg = figure(ndcg[name])
        print(f"{name:22s} {fmt(level):>22s} {fmt(true_gain, True):>25s} "
              f"{fmt(rm_gain, True):>25s} {fmt(gap, True):>25s} {kl['value']:10.3f} "
              f"{kl_log['value']:10.3f} {next_ndcg['value']:13.4f} {seconds[name]:6.1f}")
        summary[name] = {"true_top10_reward": level, "true_gain_over_sft": true_gain,
                         "rm_gain_over_sft": rm_gain, "rm_minus_true_gain": gap,
                         "kl_to_sft": kl, "kl_to_logging_policy": kl_log,
                         "next_item_ndcg@10": next_ndcg,
                         "next_item_ndcg@10_vs_sft": figure(ndcg[name] - ndcg["sft"]),
                         "train_seconds": seconds[name]}
    cost = figure(true["dpo (over-fitted RM)"] - true["dpo (control RM)"])
    print(f"DPO on the over-fitted RM vs DPO on the control RM, true top-10 reward (paired): "
          f"{fmt(cost, True)}")
    print(f"total {time.perf_counter() - started:.0f}s")
    keys = {"dpo": "dpo (over-fitted RM)", "ipo": "ipo (over-fitted RM)",
            "dpo_control": "dpo (control RM)", "cql": "cql (α=1, τ=1)",
            "grpo": "grpo (ReRe reward)", "exp_sft": "exp-sft (λ=0.5)"}
    headline: dict[str, object] = {
        "seed": args.seed,
        "overfit_rm_rmse": rmse,
        "overfit_rm_mean_spread": float(spread.mean()),
        "kept_pair_share": kept,
        "dpo_overfit_minus_control_true": cost,
    }
    for short, name in keys.items():
        headline[short] = {key: summary[name][key] for key in
                           ("true_gain_over_sft", "rm_gain_over_sft", "rm_minus_true_gain",
                            "kl_to_sft", "next_item_ndcg@10_vs_sft")}
    headline["policies"] = summary
    print(json.dumps(headline, ensure_ascii=False))


if __name__ == "__main__":
    main()
