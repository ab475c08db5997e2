"""Speed of evaluators' ranking metrics and bootstrap, side by side with the alternatives.

One run, on 6040 x 3706 float32 scores (MovieLens-1M's shape) with one target per user and the
user's history excluded:
  (a) floor: the physical limit of one pass over the matrix, measured the fastest way available
      here: the best (lowest median) of torch's `sum()` at each thread count 1, 2, 4, .. up to
      its default, and a memory copy (`np.copyto` into a preallocated buffer, counted as
      reading the matrix once: read bandwidth = matrix bytes / time). numpy's `sum()` (a
      pairwise reduction, slower than memory) is printed beside them, not used;
  (b) ours: NDCG@{1,5,10,20}, HR@{1,5,10,20}, MRR, ties expected, history excluded, timed
      interleaved with (a) in the same loop, medians over `--repeat` rounds;
  (c) torchmetrics' retrieval metrics (RetrievalNormalizedDCG / RetrievalHitRate / RetrievalMRR
      with `indexes`), history excluded by setting its scores to -inf beforehand (not timed);
      it loops over queries in Python, so it is timed on a 10% user subset beside ours on it;
  (d) ranx on top-100 runs (ranx takes sparse runs; the top-100 is what a user would hand it):
      timed as `evaluate` alone and end to end (top-100 extraction + Run/Qrels + evaluate), in
      a spawned process on the same seeded data: in-process, ranx leaves numba's OpenMP pool
      slow for the parallel loops measured after it (`ranx_in_child`).
It checks that the values agree (with the plain-Python reference on a subset of users, and with
torchmetrics and ranx on every user) and prints ratios measured in this run. Then a 10,000-
resample 95% bootstrap of the mean of 6040 values against scipy.stats.bootstrap (BCa and
percentile; on the per-user NDCG@10 and on continuous values), and the streaming path on
100,000 users x 50,000 items from 64-dimensional embeddings, measuring its peak extra memory in
a child process. Then (a) and (b) again on 100,000 users x 20,000 items (8 GB of float32): it
does not fit in memory beside the other jobs of the machine, so it is timed block by block
(5,000 users at a time: scores generated per block, not timed; the floor and ours interleaved
on each block; the sums of the per-block medians are the figures). The last line is one JSON
object of headline figures; `floor` in it gives, for both shapes, floor_ms, ours_ms, ratio and
within_2x.

    .venv/bin/python -m benchmarks.metrics_speed            # full run
    .venv/bin/python -m benchmarks.metrics_speed --streaming-users 20000   # smaller stream
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators import mean_interval, ranking_metrics, ranking_metrics_streaming, reference  # noqa: E402

N_USERS, N_ITEMS, DIM = 6040, 3706, 64
KS = (1, 5, 10, 20)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time over `repeat` runs (after one warm-up run) and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Wall times of each function over `repeat` rounds, one call of each per round (after one
    warm-up round), so that every candidate sees the same machine load."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def torch_thread_counts() -> list[int]:
    import torch

    top = torch.get_num_threads()
    counts = [1]
    while counts[-1] * 2 < top:
        counts.append(counts[-1] * 2)
    return counts + ([top] if top > 1 else [])


def floor_candidates(scores: np.ndarray, buffer: np.ndarray) -> dict[str, Callable[[], object]]:
    """Ways to make one pass over `scores`: torch's sum at each thread count, a memory copy
    (into `buffer`), and numpy's sum (printed only)."""
    import torch

    tensor = torch.from_numpy(scores)
    default = torch.get_num_threads()

    def torch_sum(n: int) -> Callable[[], object]:
        def run() -> object:
            torch.set_num_threads(n)
            try:
                return tensor.sum()
            finally:
                torch.set_num_threads(default)
        return run

    fns: dict[str, Callable[[], object]] = {
        f"torch sum, {n} thread{'s' if n > 1 else ''}": torch_sum(n)
        for n in torch_thread_counts()}
    fns["memory copy (np.copyto)"] = lambda: np.copyto(buffer, scores)
    fns["numpy sum (comparison only)"] = scores.sum
    return fns


def floor_of(medians: dict[str, float]) -> tuple[str, float]:
    """(method, seconds) of the fastest pass, numpy's sum left out."""
    usable = {k: v for k, v in medians.items() if not k.startswith("numpy")}
    name = min(usable, key=usable.__getitem__)
    return name, usable[name]


def print_floor(label: str, n_bytes: int, medians: dict[str, float], ours: float,
                note: str = "") -> dict:
    method, floor = floor_of(medians)
    print(f"{label}: {n_bytes / 2**20:.0f} MiB of float32{note}")
    for name, t in medians.items():
        mark = "  <- floor" if name == method else ""
        print(f"    {name:30s} {t * 1e3:9.2f} ms  {n_bytes / t / 1e9:6.1f} GB/s{mark}")
    ratio = ours / floor
    print(f"    {'ours, ranking_metrics':30s} {ours * 1e3:9.2f} ms  "
          f"{n_bytes / ours / 1e9:6.1f} GB/s  = {ratio:.2f}x the floor "
          f"({'within' if ratio <= 2 else 'NOT within'} 2x)")
    return {"floor_ms": round(floor * 1e3, 2), "ours_ms": round(ours * 1e3, 2),
            "ratio": round(ratio, 3), "within_2x": bool(ratio <= 2.0), "floor_method": method,
            "floor_gb_s": round(n_bytes / floor / 1e9, 1),
            "numpy_sum_ms": round(medians["numpy sum (comparison only)"] * 1e3, 2)}


def big_floor(n_users: int, n_items: int, block_users: int, repeat: int, seed: int = 5) -> dict:
    """Floor and ours on n_users x n_items, block by block of `block_users` users."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, DIM), dtype=np.float32)
    block_users = min(block_users, n_users)
    block = np.empty((block_users, n_items), np.float32)
    buffer = np.empty_like(block)
    sums: dict[str, float] = {}
    for u_lo in range(0, n_users, block_users):
        u_n = min(block_users, n_users - u_lo)
        scores = block[:u_n]
        np.matmul(rng.standard_normal((u_n, DIM), dtype=np.float32), items.T, out=scores)
        targets = rng.integers(0, n_items, u_n)
        lengths = rng.integers(20, 401, u_n)
        history = rng.integers(0, n_items, (u_n, 400))
        history[np.arange(400)[None, :] >= lengths[:, None]] = -1
        history[history == targets[:, None]] = -1
        fns = floor_candidates(scores, buffer[:u_n])
        fns["ours"] = lambda s=scores, t=targets, h=history: ranking_metrics(s, t, KS, h)
        times = interleaved(fns, repeat)
        for name, ts in times.items():
            sums[name] = sums.get(name, 0.0) + statistics.median(ts)
    ours = sums.pop("ours")
    return {"medians": sums, "ours": ours}


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-like scores (embedding dot products), a target and a 20-400 item history per user.

    The target is drawn from softmax(scores / 4) (Gumbel-max), so the scorer is informative
    (HR@10 about 0.25, NDCG@10 about 0.15, as for real ML-1M models) and the per-user values
    that the bootstrap resamples look like real ones.
    """
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((N_USERS, DIM), dtype=np.float32)
    items = rng.standard_normal((N_ITEMS, DIM), dtype=np.float32)
    scores = users @ items.T
    targets = np.argmax(scores / 4.0 + rng.gumbel(size=scores.shape).astype(np.float32), axis=1)
    lengths = rng.integers(20, 401, N_USERS)
    history = np.full((N_USERS, 400), -1, dtype=np.int64)
    for u in range(N_USERS):
        pool = rng.choice(N_ITEMS - 1, lengths[u], replace=False)
        history[u, : lengths[u]] = np.where(pool >= targets[u], pool + 1, pool)  # skip target
    return scores, targets, history


def masked(scores: np.ndarray, history: np.ndarray) -> np.ndarray:
    out = scores.copy()
    rows, cols = np.nonzero(history >= 0)
    out[rows, history[rows, cols]] = -np.inf
    return out


def run_torchmetrics(scores_masked: np.ndarray, targets: np.ndarray) -> tuple[float, dict]:
    import torch
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

    n_users = scores_masked.shape[0]
    preds = torch.from_numpy(scores_masked).reshape(-1)
    relevant = torch.zeros(n_users, N_ITEMS, dtype=torch.bool)
    relevant[torch.arange(n_users), torch.from_numpy(targets)] = True
    relevant = relevant.reshape(-1)
    indexes = torch.arange(n_users).repeat_interleave(N_ITEMS)
    metrics = {f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k, aggregation=lambda x, dim: x)
               for k in KS}
    metrics |= {f"hr@{k}": RetrievalHitRate(top_k=k, aggregation=lambda x, dim: x) for k in KS}
    metrics["mrr"] = RetrievalMRR(aggregation=lambda x, dim: x)
    start = time.perf_counter()
    out = {}
    for name, metric in metrics.items():
        metric.update(preds, relevant, indexes=indexes)
        out[name] = metric.compute().numpy().astype(np.float64)
    return time.perf_counter() - start, out


def top100(scores_masked: np.ndarray) -> np.ndarray:
    part = np.argpartition(-scores_masked, 100, axis=1)[:, :100]
    return part


def run_ranx(scores_masked: np.ndarray, targets: np.ndarray, repeat: int) -> dict:
    from ranx import Qrels, Run, evaluate

    names = [f"ndcg@{k}" for k in KS] + [f"hit_rate@{k}" for k in KS] + ["mrr"]

    def build() -> tuple[Qrels, Run]:
        top = top100(scores_masked)
        top_scores = np.take_along_axis(scores_masked, top, axis=1)
        run = Run.from_dict({
            str(u): {str(i): float(s) for i, s in zip(top[u], top_scores[u], strict=True)}
            for u in range(N_USERS)
        })
        qrels = Qrels.from_dict({str(u): {str(int(targets[u])): 1} for u in range(N_USERS)})
        return qrels, run

    def end_to_end() -> dict:
        qrels, run = build()
        return evaluate(qrels, run, names, return_mean=False, save_results_in_run=False)

    qrels, run = build()
    evaluate_time_only, per_query = timed(
        lambda: evaluate(qrels, run, names, return_mean=False, save_results_in_run=False), repeat)
    total_time, _ = timed(end_to_end, max(1, repeat // 3))
    # ranx returns per-query arrays in its query order (sorted ids as strings): map back
    order = np.array([int(q) for q in qrels.get_query_ids()])
    values = {}
    for name in names:
        arr = np.empty(N_USERS)
        arr[order] = np.asarray(per_query[name], dtype=np.float64)
        values[name.replace("hit_rate", "hr")] = arr
    return {"evaluate_s": evaluate_time_only, "end_to_end_s": total_time, "values": values}


def _ranx_child(repeat: int, queue: mp.Queue) -> None:
    scores, targets, history = make_data()
    queue.put(run_ranx(masked(scores, history), targets, repeat))


def ranx_in_child(repeat: int) -> dict:
    """`run_ranx` in a spawned process on the same data (`make_data` is seeded). In-process, a
    ranx `evaluate` left numba's OpenMP pool slow for every later parallel numba loop of the
    process -- ours at 2 threads went from 0.21 to 1.04 ns a score on 5000 x 20000, so the
    thread chooser fell back to one thread (benchmarks/RESULTS.md) -- which would make every
    figure measured after it a figure of ranx's side effect, not of ours."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_ranx_child, args=(repeat, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bootstrap_comparison(values: np.ndarray, method: str, repeat: int) -> dict:
    import scipy.stats

    ours_t, fig = timed(lambda: mean_interval(values, method, 0.95, 10_000, seed=1), repeat)
    def scipy_ci(seed: int) -> object:
        return scipy.stats.bootstrap(
            (values,), np.mean, n_resamples=10_000, confidence_level=0.95, method=method,
            vectorized=True, random_state=seed).confidence_interval

    scipy_t, ci = timed(lambda: scipy_ci(1), 2)
    other = scipy_ci(2)  # scipy against itself with another seed: the Monte Carlo noise floor
    width = ci.high - ci.low
    return {
        "ours_s": ours_t, "scipy_s": scipy_t, "speedup": scipy_t / ours_t,
        "ours": [fig.low, fig.high], "scipy": [float(ci.low), float(ci.high)],
        "max_end_diff_rel_width": float(max(abs(fig.low - ci.low), abs(fig.high - ci.high))
                                        / width),
        "scipy_vs_scipy_rel_width": float(max(abs(other.low - ci.low),
                                              abs(other.high - ci.high)) / width),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _streaming_child(n_users: int, n_items: int, queue: mp.Queue) -> None:
    rng = np.random.default_rng(1)
    users = rng.standard_normal((n_users, DIM), dtype=np.float32)
    items = rng.standard_normal((n_items, DIM), dtype=np.float32)
    targets = rng.integers(0, n_items, n_users)
    history = rng.integers(0, n_items, (n_users, 50))
    history[history == targets[:, None]] = -1
    ranking_metrics_streaming(users[:64], items[:5000], targets[:64] % 5000, KS)  # compile
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    out = ranking_metrics_streaming(users, items, targets, KS, history)
    elapsed = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    queue.put({"users": n_users, "items": n_items, "dim": DIM, "seconds": elapsed,
               "peak_extra_mib": (peak - baseline) / 1024,
               "mean_ndcg@10": float(out["ndcg@10"].mean())})


def streaming(n_users: int, n_items: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_streaming_child, args=(n_users, n_items, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=41)
    parser.add_argument("--streaming-users", type=int, default=100_000)
    parser.add_argument("--streaming-items", type=int, default=50_000)
    parser.add_argument("--reference-users", type=int, default=300)
    parser.add_argument("--torchmetrics-users", type=int, default=604)
    parser.add_argument("--big-users", type=int, default=100_000)
    parser.add_argument("--big-items", type=int, default=20_000)
    parser.add_argument("--big-block-users", type=int, default=5_000)
    parser.add_argument("--big-repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    scores, targets, history = make_data()
    print(f"scores {scores.shape} {scores.dtype}, history lengths 20-400, ks {KS}")

    fns = floor_candidates(scores, np.empty_like(scores))
    fns["ours"] = lambda: ranking_metrics(scores, targets, KS, history, "expected")
    times = interleaved(fns, args.repeat)
    ours_t = statistics.median(times.pop("ours"))
    ours = ranking_metrics(scores, targets, KS, history, "expected")
    medians = {k: statistics.median(v) for k, v in times.items()}
    small = print_floor(f"(a, b) floor and ours on {N_USERS} x {N_ITEMS}", scores.nbytes,
                        medians, ours_t, f", medians of {args.repeat} interleaved rounds")
    small["shape"] = [N_USERS, N_ITEMS]
    floor_t = floor_of(medians)[1]

    n_ref = args.reference_users
    ref = reference.ranking_metrics(scores[:n_ref], targets[:n_ref], KS, history[:n_ref])
    ref_diff = max(float(np.abs(ours[k][:n_ref] - np.array(v)).max()) for k, v in ref.items())
    print(f"    max |ours - reference| over {n_ref} users, all metrics: {ref_diff:.2e}")

    scores_masked = masked(scores, history)
    # with no score tied to a target's, every tie mode (and any sort) gives the same ranks
    ties_with_target = int((scores_masked == scores_masked[np.arange(N_USERS), targets][:, None])
                           .sum() - N_USERS)
    # torchmetrics loops over queries in Python (about 0.1 s per user for 9 metrics): it is
    # timed on the first `--torchmetrics-users` users, and ours on the same users beside it
    n_tm = args.torchmetrics_users
    tm_t, tm = run_torchmetrics(scores_masked[:n_tm], targets[:n_tm])
    ours_sub_t, ours_sub = timed(lambda: ranking_metrics(
        scores[:n_tm], targets[:n_tm], KS, history[:n_tm]), args.repeat)
    assert isinstance(ours_sub, dict)
    # torchmetrics' reciprocal rank zeroes the relevance of items scored <= 0
    # (torch.where(preds > 0, target, 0)), so its MRR is 0 for such targets: compare MRR on
    # the others and count them
    positive = scores[np.arange(n_tm), targets[:n_tm]] > 0
    tm_diff = max(float(np.abs(ours_sub[k] - tm[k]).max()) for k in tm if k != "mrr")
    tm_diff = max(tm_diff, float(np.abs(ours_sub["mrr"] - tm["mrr"])[positive].max()))
    print(f"(c) torchmetrics 9 metrics, {n_tm} users: {tm_t * 1e3:8.0f} ms vs ours on them "
          f"{ours_sub_t * 1e3:.2f} ms: ours {tm_t / ours_sub_t:.0f}x faster (per user vs the "
          f"full run: {tm_t / n_tm / (ours_t / N_USERS):.0f}x); max |diff| {tm_diff:.2e} "
          f"(MRR where the target scores > 0; {int((~positive).sum())} users excluded); "
          f"scores tied with a target: {ties_with_target}")

    rx = ranx_in_child(max(3, args.repeat // 3))
    # ranx sees only the top 100: its MRR is MRR@100 (0 beyond rank 100); ours truncated alike
    ours_rank = ranking_metrics(scores, targets, (100,), history, "optimistic")
    ours_mrr100 = ours["mrr"] * ours_rank["hr@100"]
    rx_diff = max(
        max(float(np.abs(ours[k] - rx["values"][k]).max()) for k in rx["values"] if k != "mrr"),
        float(np.abs(ours_mrr100 - rx["values"]["mrr"]).max()),
    )
    print(f"(d) ranx evaluate (top-100 runs):  {rx['evaluate_s'] * 1e3:8.2f} ms   "
          f"ours/ranx-evaluate {ours_t / rx['evaluate_s']:.2f}; end to end "
          f"{rx['end_to_end_s'] * 1e3:.0f} ms (ours {rx['end_to_end_s'] / ours_t:.0f}x faster); "
          f"max |diff| {rx_diff:.2e} (MRR compared as MRR@100)")

    rng = np.random.default_rng(3)
    boot = {
        "ndcg@10 bca": bootstrap_comparison(ours["ndcg@10"], "bca", args.repeat),
        "ndcg@10 percentile": bootstrap_comparison(ours["ndcg@10"], "percentile", args.repeat),
        "continuous bca": bootstrap_comparison(rng.gamma(2.0, 1.0, N_USERS), "bca", 3),
        "continuous percentile": bootstrap_comparison(rng.gamma(2.0, 1.0, N_USERS),
                                                      "percentile", 3),
    }
    for name, b in boot.items():
        print(f"bootstrap {name:22s} ours {b['ours_s'] * 1e3:8.1f} ms  scipy "
              f"{b['scipy_s'] * 1e3:8.0f} ms  speedup {b['speedup']:6.1f}x  "
              f"ends differ by <= {100 * b['max_end_diff_rel_width']:.2f}% of scipy's width "
              f"(scipy vs scipy, other seed: {100 * b['scipy_vs_scipy_rel_width']:.2f}%)")

    big_users, big_items = args.big_users, args.big_items
    big_load = os.getloadavg()[0]
    big_raw = big_floor(big_users, big_items, args.big_block_users, args.big_repeat)
    big = print_floor(
        f"(a, b) floor and ours on {big_users} x {big_items}", big_users * big_items * 4,
        big_raw["medians"], big_raw["ours"],
        f", block by block ({args.big_block_users} users a block, sums of per-block medians "
        f"of {args.big_repeat} interleaved rounds; load average {big_load:.2f} at its start)")
    big["shape"] = [big_users, big_items]
    big["blockwise"] = args.big_block_users < big_users
    big["block_users"] = args.big_block_users

    stream = streaming(args.streaming_users, args.streaming_items)
    print(f"streaming {stream['users']} users x {stream['items']} items (d={DIM}): "
          f"{stream['seconds']:.1f} s, peak extra memory {stream['peak_extra_mib']:.0f} MiB")

    print(json.dumps({
        "ratio_vs_floor": round(ours_t / floor_t, 3),
        "speedup_vs_torchmetrics": round(tm_t / ours_sub_t, 1),
        "speedup_vs_torchmetrics_per_user_full_run": round(tm_t / n_tm / (ours_t / N_USERS), 1),
        "speedup_vs_ranx": round(rx["end_to_end_s"] / ours_t, 2),
        "speedup_vs_ranx_evaluate_only": round(rx["evaluate_s"] / ours_t, 3),
        "bootstrap_speedup_vs_scipy": round(boot["ndcg@10 bca"]["speedup"], 1),
        "bootstrap_speedup_vs_scipy_percentile": round(boot["ndcg@10 percentile"]["speedup"], 1),
        "bootstrap_speedup_vs_scipy_continuous": round(boot["continuous bca"]["speedup"], 1),
        "bootstrap_max_end_diff_rel_width": round(
            max(b["max_end_diff_rel_width"] for b in boot.values()), 4),
        "bootstrap_scipy_vs_scipy_rel_width": round(
            max(b["scipy_vs_scipy_rel_width"] for b in boot.values()), 4),
        "max_abs_diff_vs_reference": ref_diff,
        "max_abs_diff_vs_torchmetrics": tm_diff,
        "max_abs_diff_vs_ranx": rx_diff,
        "ours_ms": round(ours_t * 1e3, 2),
        "floor_ms": round(floor_t * 1e3, 2),
        "floor": {"6040x3706": small, f"{big_users}x{big_items}": big},
        "within_2x_both": bool(small["within_2x"] and big["within_2x"]),
        "streaming_peak_extra_mib": round(stream["peak_extra_mib"], 1),
        "streaming_seconds": round(stream["seconds"], 1),
        "load_average": round(load[0], 2),
    }))


if __name__ == "__main__":
    main()
