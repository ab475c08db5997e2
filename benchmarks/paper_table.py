"""The seeds' findings on real data, side by side, with intervals (issue 15).

    python -m benchmarks.paper_table [--data FILE] [--column CANONICAL=NAME ...]
        [--out runs/paper-table] [--no-semi-synthetic]

Default data: MovieLens-100K (ratings as rewards), fetched at run time into benchmarks/.cache.
Everything runs through what a user runs: `rmdiag.pipeline.run` with `--compare all`
(leave-last-out split, full-catalog ranking of each user's last event, history excluded, ties
in expectation), once on the real log and once on a semi-synthetic world fitted to it
(`rmdiag.simulate.world_from_interactions`), where the true reward is known. For each it
writes, as Markdown and JSON (OUT/tables.md, OUT/tables.json; each run's own files stay in
OUT/real and OUT/semi-synthetic):

1. The reward-model table (the analogue of Netflix's Table 1): every reward model kind and the
   ensemble against the global, user-mean, item-mean and bias baselines, on all and unexplored
   held-out events -- RMSE, MAE and pairwise accuracy with 95% intervals over users, each
   difference from a baseline with its Holm-adjusted p -- then calibration (mean error, ECE),
   the exposure shift, the spread-error correlation and the best-of-n over-optimization curve.
2. The policy table: SFT, reward-weighted BC, exp-weighted SFT (λ from the sweep; the sweep
   itself below), A-SFT, PPO, DPO, IPO, CQL and ReRe-style GRPO -- NDCG@10, HR@10 and MRR on
   three groups of test users: all, high-reward targets (rating >= 4) and Netflix's
   high-reward trajectories (users whose accumulated reward over their history is above the
   median of the test users'); the ensemble judge with its member spread; the true reward on
   the semi-synthetic world; each policy's paired difference from SFT (paired t-test over
   users, Holm-adjusted over the eight policies, per metric and group); and the percentage
   change against reward-weighted BC (the reference Netflix reported against), with a
   percentile-bootstrap interval over users.
3. On the semi-synthetic world, also the judge's claimed gain over SFT minus the true gain,
   per policy (paired over users, Holm-adjusted): where it is positive the judge is fooled --
   reward hacking measured, not suspected.

The last line is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from evaluators.intervals import adjust_pvalues, grouped_bootstrap, paired_difference
from rmdiag.audit import AuditConfig
from rmdiag.cli import column_mapping
from rmdiag.data import DataError, load, read_table
from rmdiag.pipeline import RunConfig, run
from rmdiag.policies import PolicyConfig, summarize_policies
from rmdiag.simulate import World, world_from_interactions

POLICIES = ("sft", "rw-bc", "exp-sft", "a-sft", "ppo", "dpo", "ipo", "cql", "grpo")
RANKING = ("ndcg@10", "hr@10", "mrr")
GROUPS = ("all", "high-reward targets", "high-reward trajectories")
BASELINES = ("global_mean", "user_mean", "item_mean", "bias")
RM_METRICS = ("rmse", "mae", "pairwise_accuracy")
PERCENT_RESAMPLES = 2000  # a Python call per resample (grouped_bootstrap): modest on purpose


# ------------------------------------------------------------------------------------------
# formatting


def fmt(figure: Mapping[str, Any] | None, digits: int = 4, sign: bool = False) -> str:
    """value [low, high], or the reason a figure is unavailable."""
    if not figure or figure.get("value") is None:
        return "n/a" + (f" ({figure['reason']})" if figure and figure.get("reason") else "")
    spec = f"{'+' if sign else ''}.{digits}f"
    value = f"{figure['value']:{spec}}"
    if figure.get("low") is None:
        return value
    return f"{value} [{figure['low']:{spec}}, {figure['high']:{spec}}]"


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-300 else "< 1e-300"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# 1. the reward-model table


def reward_model_table(audit: Mapping[str, Any]) -> dict[str, Any]:
    """audit.json's figures arranged as the paper's table: models x slices x metrics, each
    reward model's difference from each baseline with its Holm-adjusted p."""
    models = [m for m in audit["models"] if m not in BASELINES]
    comparisons = {(c["model"], c["baseline"], c["slice"], c["metric"]): c
                   for c in audit["comparisons"]}
    table: dict[str, Any] = {"models": {}, "comparisons": []}
    for name in (*BASELINES, *models):
        table["models"][name] = {s: {m: audit["models"][name][s][m] for m in RM_METRICS}
                                 for s in ("all", "unexplored")}
    for model in models:
        for slice_ in ("all", "unexplored"):
            for metric in RM_METRICS:
                for baseline in BASELINES:
                    c = comparisons.get((model, baseline, slice_, metric))
                    if c is not None:
                        table["comparisons"].append(
                            {"model": model, "baseline": baseline, "slice": slice_,
                             "metric": metric, "difference": c["difference"],
                             "p_adjusted": c["p_adjusted"],
                             "detectable_difference": c.get("detectable_difference")})
    table["calibration"] = {
        name: {s: {k: audit["calibration"][name][s].get(k) for k in ("mean_error", "ece")}
               for s in ("all", "unexplored")}
        for name in (*BASELINES, *models) if name in audit["calibration"]}
    table["shift"] = audit["shift"]
    table["spread_error"] = audit["spread_error"]
    table["overoptimization"] = audit.get("overoptimization")
    table["verdict"] = audit["verdict"]
    return table


def render_reward_model_table(table: Mapping[str, Any]) -> str:
    out = []
    rows = [[name] + [fmt(table["models"][name][s][m], 4) for s in ("all", "unexplored")
                      for m in RM_METRICS]
            for name in table["models"]]
    out.append(md_table(["model"] + [f"{m} ({s})" for s in ("all", "unexplored")
                                     for m in RM_METRICS], rows))
    rows = []
    for c in table["comparisons"]:
        if c["slice"] == "unexplored" and c["difference"].get("value") is None:
            continue  # the whole unexplored slice is unavailable: said once in the table above
        rows.append([c["model"], c["baseline"], c["slice"], c["metric"],
                     fmt(c["difference"], 4, sign=True), fmt_p(c["p_adjusted"]),
                     (f"±{c['detectable_difference']:.3f}"
                      if c.get("detectable_difference") is not None else "n/a")])
    out.append("Differences from the baselines (model − baseline; lower RMSE/MAE and higher "
               "pairwise accuracy are better; Holm over each model's comparisons as the audit "
               "adjusts them; detectable: the difference the test sees at 80% power):\n\n"
               + md_table(["model", "baseline", "slice", "metric", "difference", "Holm p",
                           "detectable"], rows))
    rows = [[name, fmt(c["all"]["mean_error"], 3, sign=True), fmt(c["all"]["ece"], 3)]
            for name, c in table["calibration"].items()]
    shift = table["shift"]
    out.append("Calibration on all held-out events (mean error = mean prediction − mean reward):"
               "\n\n" + md_table(["model", "mean error", "ECE"], rows)
               + f"\n\nExposure shift (held-out − training mean reward): "
               f"{fmt(shift['heldout_minus_train'], 3, sign=True)}, p = "
               f"{fmt_p(shift.get('p_value'))}. Spread-error correlation (Spearman, all "
               f"events): {fmt(table['spread_error']['all'], 3, sign=True)}.")
    curve = table["overoptimization"]
    if curve and curve.get("n"):
        rows = [[str(n), f"{kl:.2f}", fmt(p, 3), fmt(g, 3)]
                for n, kl, p, g in zip(curve["n"], curve["kl"], curve["proxy"], curve["gold"],
                                       strict=True)]
        if curve["gold_peak_n"] == curve["n"][-1]:  # no "after the peak" to measure
            peak = (f"the gold still rises significantly at every doubling up to n = "
                    f"{curve['n'][-1]} (no peak within the grid, so no widening after one)")
        else:
            peak = (f"the gold stops rising significantly at n = {curve['gold_peak_n']}, and "
                    f"after it the proxy − gold gap widens by "
                    f"{fmt(curve['divergence'], 3, sign=True)} (one-sided p = "
                    f"{fmt_p(curve['divergence'].get('p_value'))})")
        out.append(f"Best-of-n over the SFT policy's samples (proxy: {curve['proxy_kind']}; "
                   f"gold: {curve['gold_kind']}): {peak}; proxy − gold at n = "
                   f"{curve['n'][-1]} {fmt(curve['proxy_gold_gap'], 3, sign=True)}:\n\n"
                   + md_table(["n", "KL", "proxy", "gold"], rows))
    out.append(f"Verdict: **{table['verdict']}**.")
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------
# 2. the policy table


def per_user_values(path: Path) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]],
                                         np.ndarray]:
    """per_user.parquet as (user ids, policy -> metric -> values in that user order,
    high-reward-target mask). `policies.per_user_table` writes every policy's rows in the same
    user order; that is checked, not assumed."""
    table = pq.read_table(path)
    policy = np.asarray(table["policy"].to_pylist())
    user = np.asarray(table["user_id"].to_pylist())
    names = list(dict.fromkeys(policy.tolist()))
    first = policy == names[0]
    users, high = user[first], table["high_reward"].to_numpy(zero_copy_only=False)[first]
    metrics = [m for m in table.column_names if m not in ("user_id", "policy", "target_item_id",
                                                          "target_reward", "high_reward")]
    values: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        rows = policy == name
        if not np.array_equal(user[rows], users):
            raise ValueError(f"{path}: policy {name!r} lists the users in another order")
        columns = {m: table[m].filter(rows) for m in metrics}
        values[name] = {m: np.asarray(c.to_pylist(), dtype=np.float64)
                        for m, c in columns.items() if c.null_count == 0}  # e.g. no truth
    return users, values, high.astype(bool)


def accumulated_rewards(log_source: Any, columns: Mapping[str, str] | None,
                        users: np.ndarray) -> np.ndarray:
    """Each test user's accumulated reward: the sum of their rewards before the test event
    (leave-last-out: every event but their last), in the order of `users` (their own ids)."""
    log = load(log_source, columns)
    encoded = log.users
    # events are sorted by (user, timestamp, row): a user's last row is their test event
    last = np.r_[encoded[1:] != encoded[:-1], True]
    totals = np.bincount(encoded, weights=np.where(last, 0.0, log.rewards.astype(np.float64)),
                         minlength=log.n_users + 1)
    raw = [str(u) for u in log.decode_users(np.arange(1, log.n_users + 1))]
    by_user = dict(zip(raw, totals[1:].tolist(), strict=True))
    return np.array([by_user[u] for u in users])


def percent_change(values: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Any]:
    """100 (mean(values) / mean(reference) − 1), percentile interval resampling users."""
    if len(values) < 2 or float(np.mean(reference)) == 0.0:
        return {"value": None, "low": None, "high": None,
                "reason": "the reference's mean is 0" if len(values) >= 2 else "under 2 users"}

    def statistic(x: np.ndarray, y: np.ndarray) -> float:
        den = float(np.mean(y))
        return 100.0 * (float(np.mean(x)) / den - 1.0) if den != 0.0 else float("nan")

    return grouped_bootstrap(statistic, np.arange(len(values)), values, reference,
                             n_resamples=PERCENT_RESAMPLES, seed=seed).as_dict()


def policy_table(summary: Mapping[str, Any], values: Mapping[str, Mapping[str, np.ndarray]],
                 high: np.ndarray, trajectory: np.ndarray,
                 config: PolicyConfig) -> dict[str, Any]:
    """Figures of every policy on each group of test users (see the module docstring)."""
    names = [p for p in POLICIES if p in values]
    groups = {"all": np.ones(len(high), dtype=bool), "high-reward targets": high,
              "high-reward trajectories": trajectory}
    table: dict[str, Any] = {"groups": {}, "judge": {}, "temperatures": {}}
    for group, mask in groups.items():
        subset = {n: {m: v[mask] for m, v in values[n].items()} for n in names}
        figures = summarize_policies(subset, np.ones(int(mask.sum()), dtype=bool), config)
        entry: dict[str, Any] = {"users": int(mask.sum()), "policies": {}}
        for n in names:
            row = {m: figures[n][m] for m in (*RANKING, "judge", "true_reward")
                   if m in figures[n]}
            row["vs_sft"] = figures[n].get("vs_sft", {})
            if "rw-bc" in subset and n != "rw-bc":
                row["vs_rw_bc_percent"] = {
                    m: percent_change(subset[n][m], subset["rw-bc"][m], config.seed)
                    for m in (*RANKING, "judge", "true_reward") if m in subset[n]}
            entry["policies"][n] = row
        table["groups"][group] = entry
    for n in names:
        judge = summary["policies"][n].get("judge", {})
        table["judge"][n] = {"members": judge.get("members"),
                             "member_spread": judge.get("member_spread")}
        table["temperatures"][n] = summary["policies"][n].get("temperature") or {}
    if all("true_reward" in values[n] and "judge" in values[n] for n in names):
        table["judge_minus_true_gain"] = judge_minus_true_gain(values, names, config)
    table["sweep"] = summary.get("sweep", {})
    table["chosen"] = summary["decision"]["algorithm"]
    return table


def judge_minus_true_gain(values: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str],
                          config: PolicyConfig) -> dict[str, Any]:
    """Per policy: (judge − SFT's judge) − (true − SFT's true), paired over users, Holm over
    the policies: the part of the judged gain that is the judge's error."""
    compared = [n for n in names if n != "sft"]
    tests = []
    for n in compared:
        claimed = values[n]["judge"] - values["sft"]["judge"]
        true = values[n]["true_reward"] - values["sft"]["true_reward"]
        tests.append(paired_difference(claimed, true, "bca", config.confidence,
                                       config.n_resamples, config.seed))
    adjusted = adjust_pvalues([t.p_t for t in tests], "holm")
    return {n: {"difference": t.difference.as_dict(), "p_value": float(t.p_t),
                "p_adjusted": float(p)}
            for n, t, p in zip(compared, tests, adjusted, strict=True)}


def _label(name: str, temperature: Mapping[str, float], chosen: str) -> str:
    settings = ", ".join(f"{k} {v:.3g}" for k, v in temperature.items())
    label = f"**{name}** (chosen)" if name == chosen else name
    return f"{label} ({settings})" if settings else label


def render_policy_table(table: Mapping[str, Any]) -> str:
    out = []
    for group, entry in table["groups"].items():
        policies = entry["policies"]
        has_true = "true_reward" in policies["sft"]
        metrics = (*RANKING, *(("true_reward",) if has_true else ()))
        header = ["policy", *RANKING, "judge", *(("true reward",) if has_true else ())]
        rows = []
        for n, row in policies.items():
            rows.append([_label(n, table["temperatures"][n], table["chosen"])]
                        + [fmt(row.get(m), 4) for m in (*RANKING, "judge")]
                        + ([fmt(row.get("true_reward"), 3)] if has_true else []))
        out.append(f"**{group}** ({entry['users']} test users):\n\n" + md_table(header, rows))
        rows = []
        for n, row in policies.items():
            if n == "sft":
                continue
            cells = [n]
            for m in (*metrics[:3], "judge", *metrics[3:]):
                vs = row["vs_sft"].get(m)
                cells.append(f"{fmt(vs['difference'], 4, sign=True)} ({fmt_p(vs['p_adjusted'])})"
                             if vs else "n/a")
            rows.append(cells)
        out.append(f"{group}: difference from SFT (paired; Holm p over the policies):\n\n"
                   + md_table(["policy", *metrics[:3], "judge", *metrics[3:]], rows))
        shown = (*RANKING, "judge", *metrics[3:])
        rows = [[n] + [fmt(row["vs_rw_bc_percent"].get(m), 1, sign=True) for m in shown]
                for n, row in policies.items() if "vs_rw_bc_percent" in row]
        out.append(f"{group}: % change against reward-weighted BC (95% percentile bootstrap "
                   "over users):\n\n" + md_table(["policy", *shown], rows))
    rows = [[n, ", ".join(f"{v:.3f}" for v in j["members"] or []),
             f"{j['member_spread']:.4f}" if j["member_spread"] is not None else "n/a"]
            for n, j in table["judge"].items()]
    out.append("The judge's members (each member's mean slate value over all test users) and "
               "their relative spread (std over |mean|):\n\n"
               + md_table(["policy", "members", "spread"], rows))
    if "judge_minus_true_gain" in table:
        rows = [[n, fmt(g["difference"], 3, sign=True), fmt_p(g["p_adjusted"])]
                for n, g in table["judge_minus_true_gain"].items()]
        out.append("Judged gain over SFT minus true gain (paired over users; positive: the "
                   "judge claims more than the policy delivers):\n\n"
                   + md_table(["policy", "judge gain − true gain", "Holm p"], rows))
    for algorithm, curve in table["sweep"].items():
        metric = curve["metric"]
        rows = [[f"{p['value']:.3g}", fmt(p[metric], 4)]
                + ([fmt(p["true_reward"], 3)] if "true_reward" in p else [])
                for p in curve["points"]]
        has_true = any("true_reward" in p for p in curve["points"])
        out.append(f"{algorithm} sweep of {curve['parameter']} ({metric} on {curve['split']} "
                   f"targets, {curve['targets']}):\n\n"
                   + md_table([curve["parameter"], metric,
                               *(("true reward",) if has_true else ())], rows))
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------
# the claims, read off the tables


def findings(policy: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """Which of the seeds' claims hold here: booleans read off the tables (significant at
    Holm-adjusted alpha), for the reading in RESULTS.md."""
    all_ = policy["groups"]["all"]["policies"]
    high = policy["groups"]["high-reward targets"]["policies"]

    def direction(row: Mapping[str, Any], metric: str) -> int:
        vs = row["vs_sft"].get(metric)
        if not vs or vs["p_adjusted"] is None or vs["p_adjusted"] >= alpha:
            return 0
        return 1 if vs["difference"]["value"] > 0 else -1

    out: dict[str, Any] = {}
    for name in ("exp-sft", "a-sft"):
        if name in all_:
            out[f"{name}_beats_sft_ndcg_all"] = direction(all_[name], "ndcg@10")
            out[f"{name}_beats_sft_ndcg_high_reward"] = direction(high[name], "ndcg@10")
            out[f"{name}_judge_vs_sft"] = direction(all_[name], "judge")
    for name in ("ppo", "dpo", "ipo"):
        if name in all_:
            out[f"{name}_judge_vs_sft"] = direction(all_[name], "judge")
            out[f"{name}_ndcg_vs_sft"] = direction(all_[name], "ndcg@10")
            if "true_reward" in all_[name]:
                out[f"{name}_true_vs_sft"] = direction(all_[name], "true_reward")
    return out


# ------------------------------------------------------------------------------------------


def run_one(name: str, out: Path, data: Any, columns: Mapping[str, str] | None,
            world: World | None, config: PolicyConfig, run_config: RunConfig | None = None,
            audit_config: AuditConfig | None = None) -> dict[str, Any]:
    """`rmdiag run --compare all` on the data (or the world) into OUT/name, and its tables."""
    started = time.perf_counter()
    summary_obj = run(run_config or RunConfig(compare="all"), data=data, columns=columns,
                      out=out / name, simulation=world, audit_config=audit_config,
                      policy_config=config)
    seconds = time.perf_counter() - started
    summary = json.loads((out / name / "summary.json").read_text())
    users, values, high = per_user_values(out / name / "per_user.parquet")
    source = world.generate() if world is not None else data
    accumulated = accumulated_rewards(source, None if world is not None else columns, users)
    trajectory = accumulated > np.median(accumulated)
    rm = reward_model_table(summary["audit"])
    policy = policy_table(summary, values, high, trajectory, config)
    return {"seconds": round(seconds, 1), "timings": summary_obj.timings,
            "events": summary["data"]["events"], "users": len(users),
            "trajectory_median": float(np.median(accumulated)),
            "reward_models": rm, "policies": policy, "findings": findings(policy)}


def render(results: Mapping[str, Any]) -> str:
    """tables.md from tables.json's content."""
    sections = [f"# The seeds' findings, measured: `{Path(results['data']).name}`"]
    for name in ("real", "semi-synthetic"):
        if name not in results:
            continue
        r = results[name]
        sections.append(f"## {name}: {r['events']:,} events, {r['users']} test users, "
                        f"{r['seconds']} s")
        sections.append("### Reward models\n\n" + render_reward_model_table(r["reward_models"]))
        sections.append("### Policies\n\n" + render_policy_table(r["policies"]))
        sections.append("Findings (+1 / −1: significantly higher / lower than SFT at Holm "
                        "α = 0.05; 0: not significant): " + json.dumps(r["findings"]))
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="interaction log (default: MovieLens-100K, fetched once)")
    parser.add_argument("--column", action="append", metavar="CANONICAL=NAME",
                        help="as rmdiag run --column; repeatable")
    parser.add_argument("--out", default="runs/paper-table")
    parser.add_argument("--seed", type=int, default=0, help="the fitted world's seed")
    parser.add_argument("--semi-synthetic", action=argparse.BooleanOptionalAction, default=True,
                        help="also run on a world fitted to the data (default: on)")
    parser.add_argument("--render", metavar="TABLES_JSON",
                        help="only re-render tables.md from a tables.json this wrote")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())), end="")
        return
    try:
        columns = column_mapping(args.column)
    except DataError as error:
        parser.error(str(error))
    if args.data is None:
        from benchmarks._movielens import movielens_100k_path

        data: Any = movielens_100k_path()
    else:
        data = Path(args.data)
    out = Path(args.out)
    config = PolicyConfig(progress=False)
    started = time.perf_counter()
    results: dict[str, Any] = {"data": str(data)}
    results["real"] = run_one("real", out, data, columns, None, config)
    if args.semi_synthetic:
        fit_started = time.perf_counter()
        raw, _ = read_table(data, columns)
        world = world_from_interactions(raw, seed=args.seed)
        results["world_fit_seconds"] = round(time.perf_counter() - fit_started, 1)
        results["world"] = {k: v for k, v in world.config.__dict__.items()
                            if isinstance(v, int | float | str)}
        results["semi-synthetic"] = run_one("semi-synthetic", out, None, None, world, config)
    results["seconds"] = round(time.perf_counter() - started, 1)

    markdown = render(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(markdown)
    (out / "tables.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(markdown)
    print(f"total {results['seconds']} s (target < 3600 s on 2 cores); tables in {out}")
    headline: dict[str, Any] = {"seconds": results["seconds"]}
    for name in ("real", "semi-synthetic"):
        if name in results:
            r = results[name]
            all_ = r["policies"]["groups"]["all"]["policies"]
            headline[name] = {
                "verdict": r["reward_models"]["verdict"], "chosen": r["policies"]["chosen"],
                "ndcg@10": {n: round(all_[n]["ndcg@10"]["value"], 4) for n in all_},
                "findings": r["findings"],
            }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
