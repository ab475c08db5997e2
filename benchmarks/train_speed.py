"""SFT speed on MovieLens-100K: seconds of training until test NDCG@10 reaches 0.060.

Leave-last-out split (valid = each user's second-last event, test = the last), full-catalog
ranking with the user's whole history excluded, SASRec-sized policy (hidden 64, 2 blocks,
2 heads, max length `--max-len`, 50 by default; 200 is the published ML-1M setting of SASRec
and HSTU). `--architecture sasrec,hstu` trains each block in turn on the same data, seed and
time budget (`--max-seconds`) and compares their test NDCG@10 per user, paired (BCa interval
of the difference, sign-flip p). Trains every position of every window at once with full softmax,
evaluates on the validation and test events every `--eval-every` steps (evaluation time is not
training time), stops early on validation NDCG@10, and reports the best-validation model's test
figures with bootstrap intervals over users. Also measures this machine's fp32 matmul rate and
the share of it that the training step reaches (FLOPs counted by torch's FlopCounterMode).
Metrics and intervals come from `evaluators`.

On a simulated log (`--simulated USERS`: the log `rmdiag simulate --users USERS --seed SEED`
writes, built in the process) it also prints the ceiling no model can pass: the test NDCG@10 of
ranking by the world's own behaviour-policy logits (the log draws each next item from the softmax
of those logits over the items not yet consumed, so this ranking is the Bayes-optimal next-item
prediction), and the same without the hidden per-pair taste (the ceiling of a model that learns
everything learnable from the log).

    python benchmarks/train_speed.py [--data FILE | --simulated USERS] [--threads 2]
        [--architecture sasrec,hstu] [--max-len 200] [--max-seconds 900]

The last line is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._movielens import movielens_100k_path  # noqa: E402
from evaluators.intervals import mean_interval, paired_difference  # noqa: E402
from evaluators.metrics import ranking_metrics  # noqa: E402
from rmdiag.data import DataError, Interactions, load  # noqa: E402
from rmdiag.sequences import event_sequences, user_sequences  # noqa: E402
from rmdiag.split import leave_last_out  # noqa: E402
from trainers import (  # noqa: E402
    Context,
    ModelConfig,
    SequentialRecommender,
    SFTConfig,
    policy_scores,
    sequence_windows,
    train_sft,
)
from trainers.data import TensorData, next_item_targets  # noqa: E402
from trainers.model import ARCHITECTURES  # noqa: E402

TARGET_NDCG = 0.060
K = 10


def interval(values: np.ndarray) -> dict[str, float]:
    """Mean with a 95% percentile-bootstrap interval over users (evaluators.intervals)."""
    return mean_interval(values, method="percentile").as_dict()


class HeldOut:
    """Held-out events with their full-history exclusion mask, ready to score."""

    def __init__(self, history: Interactions, events: Interactions, max_len: int) -> None:
        sequences = event_sequences(history, events, max_len, timestamps=True)
        self.context: Context = sequences.context()
        self.targets = torch.from_numpy(sequences.targets)
        full = event_sequences(history, events, max(1, int(np.bincount(history.users).max())))
        self.seen = np.where(full.history_items > 0, full.history_items, -1)  # -1 = no item
        self.users = full.users

    def metrics(self, model: SequentialRecommender) -> dict[str, np.ndarray]:
        """Per-user NDCG@10 / HR@10, full catalog, the user's whole history excluded (also
        what lies beyond the model's window), ties in expectation (evaluators.metrics)."""
        scores = policy_scores(model, self.context, exclude_history=False, batch_size=512)
        figures = ranking_metrics(scores, self.targets, ks=(K,), exclude=self.seen,
                                  padding_column=0)
        return {"ndcg": figures[f"ndcg@{K}"], "hr": figures[f"hr@{K}"]}


def behaviour_ceiling(world, log: Interactions, test: HeldOut) -> dict[str, dict]:
    """Test NDCG@10 of ranking by the world's behaviour-policy logits (module docstring), with
    and without the hidden per-pair taste; `log` is the world's log as loaded (its id maps)."""
    from rmdiag.simulate.model import behaviour_log_weights

    params = world.parameters
    raw_users = np.asarray(log.user_ids)[test.users].astype(np.int64)
    raw_items = np.asarray(log.item_ids)[1:].astype(np.int64)  # encoded 1..n -> world ids

    out = {}
    for name, hidden in (("bayes", True), ("without_hidden_taste", False)):
        scores = np.full((len(raw_users), log.n_items + 1), -np.inf, dtype=np.float32)
        for lo in range(0, len(raw_users), 2048):
            users = raw_users[lo:lo + 2048]
            block = np.broadcast_to(behaviour_log_weights(params, world.seed, users, hidden),
                                    (len(users), params.n_items))
            scores[lo:lo + len(users), 1:] = block[:, raw_items - 1]
        figures = ranking_metrics(scores, test.targets, ks=(K,), exclude=test.seen,
                                  padding_column=0)
        out[name] = interval(figures[f"ndcg@{K}"])
    return out


def matmul_flops_per_second(size: int = 1024, repeats: int = 10) -> float:
    """Best-of-`repeats` fp32 square matmul rate on this machine (FLOP/s)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2 * size**3 / best


def step_flops(model: SequentialRecommender, batch: TensorData) -> int:
    """FLOPs of one training step (forward + backward), counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        targets = next_item_targets(model, batch)
        (-targets.log_prob.mean()).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def train_one(architecture: str, args: argparse.Namespace, n_items: int, data: TensorData,
              valid: HeldOut, test: HeldOut, targets_per_row: float) -> dict:
    """SFT of one architecture from the seed; its curve, final test figures and speed."""
    torch.manual_seed(args.seed)
    model = SequentialRecommender(
        ModelConfig(n_items=n_items, hidden=64, n_blocks=2, n_heads=2, max_len=args.max_len,
                    dropout=args.dropout, architecture=architecture)
    )

    def evaluate(policy: torch.nn.Module) -> dict[str, float]:
        assert isinstance(policy, SequentialRecommender)
        return {
            "valid_ndcg@10": float(valid.metrics(policy)["ndcg"].mean()),
            "test_ndcg@10": float(test.metrics(policy)["ndcg"].mean()),
        }

    config = SFTConfig(
        lr=args.lr, batch_size=args.batch_size, epochs=1000, max_seconds=args.max_seconds,
        eval_every=args.eval_every, early_stopping_metric="valid_ndcg@10",
        patience=args.patience, seed=args.seed, progress=False,
    )
    load_before = os.getloadavg()
    result = train_sft(model, data, config, eval_fn=evaluate)
    reached = [row for row in result.history if row["test_ndcg@10"] >= TARGET_NDCG]
    final = test.metrics(model)
    peak = matmul_flops_per_second()
    batch = {key: value[: args.batch_size] for key, value in data.items()}
    model.train()
    flops = step_flops(model, batch)
    seconds_per_step = result.train_seconds / result.steps
    return {
        "architecture": architecture,
        "result": result,
        "per_user": final,
        "seconds_to_target": reached[0]["train_seconds"] if reached else None,
        "test_ndcg@10": interval(final["ndcg"]),
        "test_hr@10": interval(final["hr"]),
        "events_per_second": result.steps * args.batch_size * targets_per_row
        / result.train_seconds,
        "seconds_per_step": seconds_per_step,
        "flops": flops,
        "matmul_peak": peak,
        "matmul_share": flops / seconds_per_step / peak,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def report(run: dict, args: argparse.Namespace) -> None:
    result = run["result"]
    print(f"--- {run['architecture']}: load (1/5/15 min) before {run['load_before']}, after "
          f"{run['load_after']}")
    for row in result.history:
        print(f"  step {int(row['step']):5d}  train {row['train_seconds']:7.1f}s  "
              f"valid NDCG@10 {row['valid_ndcg@10']:.4f}  test NDCG@10 {row['test_ndcg@10']:.4f}")
    if run["seconds_to_target"] is None:
        print(f"test NDCG@10 never reached {TARGET_NDCG}")
    else:
        print(f"seconds of training until test NDCG@10 >= {TARGET_NDCG}: "
              f"{run['seconds_to_target']:.1f}")
    print(f"best validation at step {result.best_step} of {result.steps} "
          f"({result.train_seconds:.1f}s, stopped early: {result.stopped_early})")
    ndcg, hit = run["test_ndcg@10"], run["test_hr@10"]
    print(f"test NDCG@10 {ndcg['value']:.4f} [{ndcg['low']:.4f}, {ndcg['high']:.4f}]  "
          f"HR@10 {hit['value']:.4f} [{hit['low']:.4f}, {hit['high']:.4f}] (95% bootstrap)")
    print(f"throughput {run['events_per_second']:,.0f} training events/s "
          f"({run['seconds_per_step'] * 1000:.1f} ms/step)")
    print(f"fp32 matmul peak {run['matmul_peak'] / 1e9:.1f} GFLOP/s; training step "
          f"{run['flops'] / 1e9:.2f} GFLOP -> {run['flops'] / run['seconds_per_step'] / 1e9:.1f} "
          f"GFLOP/s = {run['matmul_share']:.1%} of peak")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, default=None,
                        help="any log the data layer reads (default ML-100K)")
    source.add_argument("--simulated", type=int, default=None, metavar="USERS",
                        help="the simulated log `rmdiag simulate --users USERS --seed SEED` "
                             "writes, built here; also prints the world's next-item ceiling")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--architecture", default="sasrec",
                        help="comma-separated policy blocks to train in turn: sasrec, hstu")
    parser.add_argument("--max-len", type=int, default=50,
                        help="history length (200: the published ML-1M setting)")
    # 64 windows x 50 positions per step and lr 5e-3 reached the target in the fewest seconds in
    # a small sweep (batch 32/64/128, lr 2e-3..1e-2, dropout 0..0.2) on this machine.
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--eval-every", type=int, default=20, help="steps between evaluations")
    parser.add_argument("--patience", type=int, default=10, help="evaluations without improvement")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="training time budget of each architecture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    architectures = [name.strip() for name in args.architecture.split(",") if name.strip()]
    unknown = [name for name in architectures if name not in ARCHITECTURES]
    if unknown or not architectures or args.max_len < 1:
        parser.error(f"--architecture takes names from {ARCHITECTURES}; --max-len must be >= 1")
    torch.set_num_threads(args.threads)

    world = None
    try:
        if args.simulated is not None:
            from rmdiag.data import encode, validate
            from rmdiag.simulate import SimulationConfig, World

            world = World(SimulationConfig(n_users=args.simulated, seed=args.seed))
            source = f"<rmdiag simulate --users {args.simulated} --seed {args.seed}>"
            log = encode(validate(world.generate(), source), source=source)
        else:
            log = load(args.data if args.data is not None else movielens_100k_path())
    except (DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    split = leave_last_out(log)
    longest = int(np.bincount(split.train.users).max())
    user_rows = user_sequences(split.train, max_len=longest, timestamps=True)
    assert user_rows.timestamps is not None
    data = sequence_windows(
        torch.from_numpy(user_rows.items), torch.from_numpy(user_rows.rewards), args.max_len,
        timestamps=torch.from_numpy(user_rows.timestamps),
    )
    targets_per_row = float((data["items"][:, 1:] != 0).sum()) / data["items"].shape[0]
    valid = HeldOut(split.train, split.valid, args.max_len)
    test = HeldOut(split.train.concat(split.valid), split.test, args.max_len)

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"data: {log.source}: {len(log)} events, {log.n_users} users, {log.n_items} items; "
          f"{data['items'].shape[0]} training windows of {args.max_len + 1}")
    print(f"machine: {uptime}")
    print(f"threads {args.threads}, batch {args.batch_size} windows, lr {args.lr}, "
          f"dropout {args.dropout}, budget {args.max_seconds:.0f} s of training each")
    runs = []
    for architecture in architectures:
        runs.append(train_one(architecture, args, log.n_items, data, valid, test,
                              targets_per_row))
        report(runs[-1], args)
    figures = {
        run["architecture"]: {key: run[key] for key in (
            "seconds_to_target", "test_ndcg@10", "test_hr@10", "events_per_second",
            "matmul_share")} | {"train_seconds": run["result"].train_seconds,
                                "steps": run["result"].steps,
                                "load_average": list(run["load_before"])}
        for run in runs
    }
    headline: dict = {"max_len": args.max_len, "budget_seconds": args.max_seconds} | figures
    if world is not None:
        ceiling = behaviour_ceiling(world, log, test)
        headline["ceiling_test_ndcg@10"] = ceiling
        for name, figure in ceiling.items():
            print(f"ceiling ({name.replace('_', ' ')}): test NDCG@10 {figure['value']:.4f} "
                  f"[{figure['low']:.4f}, {figure['high']:.4f}]")
    if len(runs) == 2:
        first, second = runs
        compared = paired_difference(second["per_user"]["ndcg"], first["per_user"]["ndcg"])
        name = f"{second['architecture']}_minus_{first['architecture']}_test_ndcg@10"
        headline[name] = compared.as_dict()
        diff = compared.difference
        print(f"{second['architecture']} - {first['architecture']} test NDCG@10 (paired over "
              f"{compared.n} users): {diff.value:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}], "
              f"sign-flip p {compared.p_randomization:.3g}")
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
