"""Coverage of evaluators' 95% intervals (percentile, BCa, t) on populations with a known mean.

For each population and each number of users n in (20, 50, 200, 2000) it draws `--samples`
independent samples of n users, computes the 95% interval of the mean with each method through
the project's own routines (`evaluators.intervals.mean_interval`, and for the paired population
`paired_difference(a, b, method).difference`) and counts how often the interval covers the exact
population mean. Bootstraps use n_resamples=2000, the audit's and the pipeline's default
(`AuditConfig.n_resamples`, `PolicyConfig.n_resamples`). Populations:
  (a) ndcg: per-user NDCG@10 of one target, 90% zeros, else 1/log2(rank+1) with the rank
      uniform on 1..10 (11 distinct values, many ties; mean = 0.1 * mean_r 1/log2(r+1));
  (b) lognormal: skewed rewards, exp(N(0, 1)), mean exp(1/2), skewness 6.2;
  (c) paired: two correlated per-user rewards a = s + x, b = s + y with a shared user effect
      s ~ lognormal(0, 1) and x ~ Exp(mean 1.2), y ~ Exp(mean 1.0) (corr(a, b) about 0.8),
      mean difference exactly 0.2.
Each coverage is printed with its Monte Carlo standard error sqrt(p (1 - p) / samples), the
share of misses on each side (truth below the interval / above it), the mean width, and a flag
when it falls outside 93-97%. Sample i of every cell uses seed (seed, population, n, i) for the
data and i for the bootstrap, so runs are reproducible and independent of --threads.
The last line is one JSON object of headline figures.

    /work/main/.venv/bin/python -m benchmarks.interval_coverage                # 500 samples
    /work/main/.venv/bin/python -m benchmarks.interval_coverage --samples 2000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators import mean_interval  # noqa: E402
from evaluators.intervals import paired_difference  # noqa: E402

SIZES = (20, 50, 200, 2000)
METHODS = ("percentile", "bca", "t")
POPULATIONS = ("ndcg", "lognormal", "paired")
N_RESAMPLES = 2000
CONFIDENCE = 0.95
BAND = (0.93, 0.97)
PAIRED_X_MEAN, PAIRED_Y_MEAN = 1.2, 1.0

NDCG_HIT = 0.1
NDCG_VALUES = 1.0 / np.log2(np.arange(1, 11) + 1.0)
TRUE_MEAN = {
    "ndcg": NDCG_HIT * float(NDCG_VALUES.mean()),
    "lognormal": float(np.exp(0.5)),
    "paired": PAIRED_X_MEAN - PAIRED_Y_MEAN,
}
# Where the project uses each method (checked in the code of this branch).
USED_BY = {
    "percentile": "rmdiag audit (rmdiag/audit/statistics.py INTERVAL_METHOD; 2,000 resamples, "
                  "min_users 20)",
    "bca": "pipeline policy figures and paired gains (rmdiag/policies.py _figure, "
           "summarize_policies; 2,000 resamples) and EnsembleJudge's default (method='bca', "
           "10,000 resamples)",
    "t": "not used by rmdiag for reported figures (evaluators offers it)",
}


def draw(population: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One sample of n users: the per-user values (and b for the paired population)."""
    if population == "ndcg":
        hit = rng.random(n) < NDCG_HIT
        return np.where(hit, NDCG_VALUES[rng.integers(0, 10, n)], 0.0), None
    if population == "lognormal":
        return rng.lognormal(0.0, 1.0, n), None
    s = rng.lognormal(0.0, 1.0, n)
    return s + rng.exponential(PAIRED_X_MEAN, n), s + rng.exponential(PAIRED_Y_MEAN, n)


def run_cell(task: tuple[str, int, int, int, int]) -> dict:
    """Samples [start, stop) of one (population, n) cell: hits, misses per side and widths."""
    population, n, seed, start, stop = task
    pop_index = POPULATIONS.index(population)
    out = {m: {"cover": 0, "below": 0, "above": 0, "width": 0.0} for m in METHODS}
    degenerate = 0
    truth = TRUE_MEAN[population]
    t0 = time.perf_counter()
    for i in range(start, stop):
        rng = np.random.default_rng([seed, pop_index, n, i])
        a, b = draw(population, n, rng)
        values = a if b is None else a - b
        degenerate += bool(np.all(values == values[0]))
        for method in METHODS:
            if b is None:
                fig = mean_interval(a, method, CONFIDENCE, N_RESAMPLES, seed=i)
            else:
                fig = paired_difference(a, b, method, CONFIDENCE, N_RESAMPLES, seed=i).difference
            cell = out[method]
            if fig.low <= truth <= fig.high:
                cell["cover"] += 1
            elif truth < fig.low:
                cell["below"] += 1
            else:
                cell["above"] += 1
            cell["width"] += fig.high - fig.low
    return {"population": population, "n": n, "counts": out, "degenerate": degenerate,
            "seconds": time.perf_counter() - t0}


def _init_worker() -> None:
    import numba

    numba.set_num_threads(1)  # one process per core; no oversubscription


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{args.samples} samples per cell, {CONFIDENCE:.0%} intervals, bootstraps with "
          f"n_resamples={N_RESAMPLES} (the audit's and pipeline's default), seed {args.seed}, "
          f"{args.threads} worker processes")
    for population in POPULATIONS:
        print(f"  true mean {population:9s} = {TRUE_MEAN[population]:.6f}")

    chunk = max(1, -(-args.samples // (4 * args.threads)))
    tasks = [(p, n, args.seed, s, min(s + chunk, args.samples))
             for p in POPULATIONS for n in SIZES for s in range(0, args.samples, chunk)]
    tasks.sort(key=lambda t: -t[1])  # largest n first: better load balance
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.threads, initializer=_init_worker) as pool:
        parts = pool.map(run_cell, tasks, chunksize=1)
    elapsed = time.perf_counter() - start

    cells: dict[tuple[str, int], dict] = {}
    for part in parts:
        key = (part["population"], part["n"])
        cell = cells.setdefault(key, {"counts": {m: {"cover": 0, "below": 0, "above": 0,
                                                      "width": 0.0} for m in METHODS},
                                      "degenerate": 0, "seconds": 0.0})
        cell["degenerate"] += part["degenerate"]
        cell["seconds"] += part["seconds"]
        for m in METHODS:
            for k, v in part["counts"][m].items():
                cell["counts"][m][k] += v

    samples = args.samples
    flagged = []
    coverage: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\ncoverage of the true mean (nominal {CONFIDENCE:.0%}; flag '!!' outside "
          f"{BAND[0]:.0%}-{BAND[1]:.0%}); MC s.e. = sqrt(p(1-p)/{samples}); "
          "misses: truth below the interval / above it")
    print(f"{'population':10s} {'n':>5s} {'method':10s} {'coverage':>9s} {'s.e.':>6s} "
          f"{'below':>6s} {'above':>6s} {'mean width':>11s}")
    for population in POPULATIONS:
        for n in SIZES:
            cell = cells[(population, n)]
            for m in METHODS:
                c = cell["counts"][m]
                p = c["cover"] / samples
                se = float(np.sqrt(p * (1 - p) / samples))
                flag = "!!" if not BAND[0] <= p <= BAND[1] else ""
                if flag:
                    flagged.append(f"{m} n={n} {population} {p:.3f}")
                coverage.setdefault(population, {}).setdefault(str(n), {})[m] = round(p, 4)
                print(f"{population:10s} {n:5d} {m:10s} {p:9.3f} {se:6.3f} "
                      f"{c['below'] / samples:6.3f} {c['above'] / samples:6.3f} "
                      f"{c['width'] / samples:11.5f} {flag}")
            if cell["degenerate"]:
                print(f"{'':10s} {'':5s} ({cell['degenerate']} of {samples} samples have every "
                      "value equal: a zero-width interval that cannot cover)")
    print("\ncells outside the band:", "; ".join(flagged) if flagged else "none")
    print("\nwhere the project uses each method:")
    for m in METHODS:
        print(f"  {m:10s} {USED_BY[m]}")
    print("\nseconds per cell (summed over workers):")
    for population in POPULATIONS:
        print(f"  {population:10s} " + "  ".join(
            f"n={n}: {cells[(population, n)]['seconds']:.1f}" for n in SIZES))
    print(f"run time {elapsed:.1f} s with {args.threads} workers")
    print(json.dumps({
        "samples": samples,
        "n_resamples": N_RESAMPLES,
        "coverage": coverage,
        "flagged": flagged,
        "mc_se_at_95": round(float(np.sqrt(0.95 * 0.05 / samples)), 4),
        "seconds": round(elapsed, 1),
        "load_average": round(load[0], 2),
    }))


if __name__ == "__main__":
    main()
