"""Fetch MovieLens-100K at run time into benchmarks/.cache (never committed: the data may not be
redistributed). It ships inside the PyPI wheel recbole==1.2.1, which is downloaded without its
dependencies and unzipped; recbole itself is never installed."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
WHEEL = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def movielens_100k_path(cache: Path = CACHE) -> Path:
    """Path of ml-100k.inter (RecBole format), downloading the wheel once if needed."""
    target = cache / "ml-100k" / "ml-100k.inter"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("recbole-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            partial = target.with_suffix(".part")
            partial.write_bytes(archive.read(MEMBER))
            partial.replace(target)
    return target


def movielens_100k_u_data(cache: Path = CACHE) -> Path:
    """The same ratings in MovieLens' own `u.data` format (tab-separated, no header)."""
    target = cache / "ml-100k" / "u.data"
    if not target.exists():
        lines = movielens_100k_path(cache).read_text().splitlines()[1:]
        target.write_text("".join(f"{line}\n" for line in lines))
    return target


if __name__ == "__main__":
    print(movielens_100k_path())
