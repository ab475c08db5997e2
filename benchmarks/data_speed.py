"""Sequence building speed (100k events) and streaming memory (10M events from Parquet).

Run from the repository root:  python -m benchmarks.data_speed [--events-large 10000000]

1. 100k simulated events, in memory: validate + encode, leave-last-out split, per-user training
   sequences (L=50) and per-event test histories — against the same sequences built by a plain
   per-user Python loop (what a first implementation usually looks like), outputs checked equal.
2. 10M simulated events written to Parquet (cached in benchmarks/.cache), then per-user sequences
   built in a child process two ways — streaming (`user_sequences_from_parquet`) and loading the
   whole table (`load` + `user_sequences`) — each child's peak RSS measured by the OS.
The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rmdiag.data import Interactions, encode, load, validate
from rmdiag.sequences import event_sequences, user_sequences, user_sequences_from_parquet
from rmdiag.simulate import SimulationConfig, World
from rmdiag.split import leave_last_out

CACHE = Path(__file__).resolve().parent / ".cache"
MAX_LEN = 50


def _world_for(events: int, seed: int) -> World:
    """A default world scaled (users) to about `events` events."""
    base = SimulationConfig(seed=seed)
    per_user = len(World(base).generate()) / base.n_users
    n_users = max(10, int(round(events / per_user)))
    return World(SimulationConfig(n_users=n_users, seed=seed))


def build_all(log: Interactions) -> tuple[np.ndarray, np.ndarray]:
    split = leave_last_out(log)
    train = user_sequences(split.train, MAX_LEN)
    test = event_sequences(split.train.concat(split.valid), split.test, MAX_LEN)
    return train.items, test.history_items


def build_all_python_loop(log: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """The reference a first implementation writes: a dict of lists per user, a loop per event."""
    per_user: dict[int, list[tuple[int, int, int]]] = {}
    for user, ts, row, item in zip(
        log.users.tolist(),
        log.timestamps.tolist(),
        log.column("row").tolist(),
        log.items.tolist(),
        strict=True,
    ):
        per_user.setdefault(user, []).append((ts, row, item))
    train = np.zeros((log.n_users + 1, MAX_LEN), dtype=np.int64)
    test_rows = []
    for user in sorted(per_user):
        events = sorted(per_user[user])
        items = [e[2] for e in events]
        if len(items) >= 3:
            train_items, test_history = items[:-2], items[:-1]
            test_rows.append(test_history[-MAX_LEN:])
        else:
            train_items = items
        tail = train_items[-MAX_LEN:]
        train[user, MAX_LEN - len(tail) :] = tail
    test = np.zeros((len(test_rows), MAX_LEN), dtype=np.int64)
    for k, row in enumerate(test_rows):
        test[k, MAX_LEN - len(row) :] = row
    return train, test


def small_benchmark(events: int, seed: int) -> dict[str, float]:
    table = _world_for(events, seed).generate()
    started = time.perf_counter()
    log = encode(validate(table, "<simulated>"))
    load_s = time.perf_counter() - started
    timings, loop_timings = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        ours = build_all(log)
        timings.append(time.perf_counter() - t0)
    for _ in range(2):
        t0 = time.perf_counter()
        reference = build_all_python_loop(log)
        loop_timings.append(time.perf_counter() - t0)
    assert np.array_equal(ours[0], reference[0]) and np.array_equal(ours[1], reference[1])
    best, loop_best = min(timings), min(loop_timings)
    print(f"[{len(log):,} events, {log.n_users:,} users, L={MAX_LEN}]")
    print(f"  validate + encode            {load_s:8.3f} s")
    print(f"  split + sequences (ours)     {best:8.3f} s   (best of 5)")
    print(
        f"  split + sequences (py loop)  {loop_best:8.3f} s   (best of 2)"
        f"  -> ours {loop_best / best:.1f}x faster"
    )
    print(f"  total load-to-sequences      {load_s + best:8.3f} s   (target < 1 s)")
    return {
        "events_small": len(log),
        "seconds_sequences_100k": best,
        "seconds_load_plus_sequences_100k": load_s + best,
        "speedup_vs_python_loop": loop_best / best,
    }


def _large_file(events: int, seed: int) -> Path:
    path = CACHE / f"simulated_{events}_{seed}.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    world = _world_for(events, seed)
    partial = path.with_suffix(".part")
    writer = None
    for batch in world.generate_batches(batch_users=20_000):
        if writer is None:
            writer = pq.ParquetWriter(partial, batch.schema, compression="zstd")
        writer.write_table(batch)
    assert writer is not None
    writer.close()
    partial.replace(path)
    return path


def _child(mode: str, path: str) -> None:
    """Runs in a fresh process so its peak RSS is its own."""
    started = time.perf_counter()
    if mode == "streaming":
        result = user_sequences_from_parquet(path, MAX_LEN)
        shape, n = result.sequences.items.shape, result.n_events
    else:
        log = load(path)
        shape, n = user_sequences(log, MAX_LEN).items.shape, len(log)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "peak_rss": peak,
                "shape": list(shape),
                "events": n,
            }
        )
    )


def large_benchmark(events: int, seed: int) -> dict[str, float]:
    t0 = time.perf_counter()
    path = _large_file(events, seed)
    print(
        f"[{events:,}-event Parquet at {path.name}: {path.stat().st_size / 2**20:.0f} MiB,"
        f" ready in {time.perf_counter() - t0:.1f} s]"
    )
    results = {}
    for mode in ("streaming", "in-memory"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.data_speed", "--child", mode, str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(
            f"  {mode:10s} user_sequences: {r['seconds']:6.1f} s, peak RSS "
            f"{r['peak_rss'] / 2**30:5.2f} GiB, {r['events']:,} events -> {r['shape']}"
        )
    stream, full = results["streaming"], results["in-memory"]
    print(
        f"  streaming peak RSS is {full['peak_rss'] / stream['peak_rss']:.1f}x lower "
        "than loading the whole table (target < 2 GiB)"
    )
    return {
        "events_large": stream["events"],
        "peak_rss_gib_streaming": stream["peak_rss"] / 2**30,
        "peak_rss_gib_in_memory": full["peak_rss"] / 2**30,
        "seconds_streaming": stream["seconds"],
        "seconds_in_memory": full["seconds"],
    }


def movielens_formats() -> dict[str, float]:
    """ML-100K read from RecBole's .inter file and from MovieLens' own u.data must be equal."""
    from benchmarks._movielens import movielens_100k_path, movielens_100k_u_data

    inter, udata = load(movielens_100k_path()), load(movielens_100k_u_data())
    equal = inter.table.equals(udata.table) and np.array_equal(inter.item_ids, udata.item_ids)
    print(
        f"[MovieLens-100K] .inter and u.data load to equal tables: {equal} "
        f"({len(inter):,} events, {inter.n_users} users, {inter.n_items} items)"
    )
    if not equal:
        raise SystemExit("MovieLens-100K formats disagree")
    return {"movielens_formats_equal": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-small", type=int, default=100_000)
    parser.add_argument("--events-large", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    figures = movielens_formats() | small_benchmark(args.events_small, args.seed)
    if args.events_large > 0:
        figures |= large_benchmark(args.events_large, args.seed)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
