"""The reward-model audit on MovieLens-100K (leave-last-out, rewards = ratings).

Run from the repository root:
    python -m benchmarks.audit_movielens [--members 5] [--heldout-per-user K] [--out DIR]
        [--compare-serial]

Fits the four baselines and a 5-member ensemble (LightGBM and sequence reward models, bootstrap
resamples of users) on each user's events but the last two, audits them on those last two
events, and prints: every model's RMSE, MAE and pairwise accuracy with 95% intervals on the
`all` and `unexplored` slices; every reward model against every baseline (difference with
interval, Holm-adjusted p, and the smallest difference it could detect); calibration (mean
error, ECE) and the exposure shift; the spread/error correlation; the verdict; the wall time of each
stage against the 2-minute target. The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ratings file (default: MovieLens-100K, fetched once)")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--kinds", default="lightgbm,sequence")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-per-user", type=int, default=2,
                        help="hold out each user's last K events (default 2, leave-last-out)")
    parser.add_argument("--out", help="also write audit.json and audit.html here")
    parser.add_argument(
        "--compare-serial",
        action="store_true",
        help="also run the audit with members fitted in this process (threads=1), side by side",
    )
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from benchmarks._movielens import movielens_100k_path
    from rmdiag.audit import AuditConfig, audit, audit_inputs
    from rmdiag.report import write_audit
    from rmdiag.select import judge

    path = args.data or str(movielens_100k_path())
    load_avg = os.getloadavg()
    started = time.perf_counter()
    train, heldout = audit_inputs(path, heldout_per_user=args.heldout_per_user)
    loaded = time.perf_counter() - started
    config = AuditConfig(
        kinds=args.kinds, n_members=args.members, threads=args.threads, seed=args.seed
    )
    result = audit(train, heldout, config=config)
    judgement = judge(result)
    if args.out:
        write_audit(result, judgement, args.out)
    total = time.perf_counter() - started

    print(f"data: {path}: {len(train)} training and {len(heldout)} held-out events")
    print(f"slices: {json.dumps(result.slices)}")
    print(f"\n{'model':12s} {'slice':10s} {'RMSE':>24s} {'MAE':>24s} {'pairwise acc.':>24s}")
    for name, slices in result.models.items():
        for slice_name, figs in slices.items():
            cells = [
                figs[m].text() if figs[m].available else "n/a"
                for m in ("rmse", "mae", "pairwise_accuracy")
            ]
            print(f"{name:12s} {slice_name:10s} " + " ".join(f"{c:>24s}" for c in cells))
    print("\nreward model vs baseline (difference = model - baseline; Holm within slice x metric)")
    for c in result.comparisons:
        adjusted = "n/a" if c["p_adjusted"] is None else f"{c['p_adjusted']:.2g}"
        print(
            f"{c['model']:10s} {c['baseline']:12s} {c['slice']:10s} {c['metric']:18s} "
            f"{c['difference'].text():>26s}  p_holm={adjusted}  detectable="
            + ("n/a" if c["detectable_difference"] is None
               else f"{c['detectable_difference']:.3g}")
        )
    print("\ncalibration (mean error = prediction - reward; ECE over 10 quantile bins):")
    for name, slices in result.calibration.items():
        print(f"  {name:12s} " + "  ".join(
            f"{s}: mean_error {c['mean_error'].text()}, ece {c['ece'].text()}"
            for s, c in slices.items()))
    print(f"exposure shift, held-out minus train mean reward: "
          f"{result.shift['heldout_minus_train'].text()}")
    print("\nspread vs |error| (Spearman):", {k: f.text() for k, f in result.spread_error.items()})
    print(
        "train RMSE, held-out minus train RMSE (paired p):",
        {
            k: f"{v['train_rmse'].text()}, {v['gap'].text()} (p={v['p_value']:.2g})"
            for k, v in result.gap.items()
        },
    )
    print(f"\nverdict: {judgement.verdict}")
    for reason in judgement.reasons:
        print(f"  - {reason}")
    print(
        f"\nwall time {total:.1f} s (target < 120 s on 2 cores): load+split {loaded:.1f} s, "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        + f"; load average at start {load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f}"
    )
    serial_seconds = None
    if args.compare_serial:
        import dataclasses

        mark = time.perf_counter()
        serial = audit(train, heldout, config=dataclasses.replace(config, threads=1))
        serial_seconds = time.perf_counter() - mark
        same = serial.models["ensemble"]["all"]["rmse"] == result.models["ensemble"]["all"]["rmse"]
        print(
            f"serial fitting (one process): {serial_seconds:.1f} s vs {result.seconds:.1f} s with "
            f"{args.threads} workers: {serial_seconds / result.seconds:.2f}x; "
            f"same ensemble RMSE figure: {same}"
        )
    ensemble = result.models["ensemble"]["all"]
    ordering = next(c for c in result.comparisons if c["model"] == "ensemble"
                    and c["baseline"] == "item_mean" and c["slice"] == "all"
                    and c["metric"] == "pairwise_accuracy")
    headline = {
        "heldout_per_user": args.heldout_per_user,
        "pairs": result.slices["all"]["pairs"],
        "pair_users": result.slices["all"]["pair_users"],
        "ordering_vs_item_mean": ordering["difference"].as_dict(),
        "ordering_vs_item_mean_p_holm": ordering["p_adjusted"],
        "ordering_vs_item_mean_detectable": ordering["detectable_difference"],
        "ensemble_mean_error": result.calibration["ensemble"]["all"]["mean_error"].value,
        "shift": result.shift["heldout_minus_train"].as_dict(),
        "seconds": round(total, 2),
        "members": args.members,
        "verdict": judgement.verdict,
        "ensemble_rmse": ensemble["rmse"].value,
        "ensemble_pairwise_accuracy": ensemble["pairwise_accuracy"].value,
        "bias_rmse": result.models["bias"]["all"]["rmse"].value,
        "item_mean_rmse": result.models["item_mean"]["all"]["rmse"].value,
        "user_mean_rmse": result.models["user_mean"]["all"]["rmse"].value,
        "load_average_1min": round(load_avg[0], 2),
        "serial_seconds": None if serial_seconds is None else round(serial_seconds, 2),
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
