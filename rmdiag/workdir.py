"""The work directory of `rmdiag run`: each finished stage's outputs, so `--resume` continues.

`OUT/.work/` (hidden, not a published output) holds

- `stages.json`: the stage record, rewritten atomically after each stage starts and ends: per
  stage its `fingerprint` (sha256 of its `inputs` as canonical JSON), the `inputs` themselves
  (the configs that affect it, the data file's identity or the simulated world's config, and the
  fingerprints of the stages it depends on), `done`, and `status` (`computed` or `reused`);
- `audit/`: `result.json` (`AuditResult.to_json()` and the stage's fingerprint),
  `arrays.npz` (the per-event arrays of audit.html's plots, read with `allow_pickle=False`) and
  `ensemble/` (`rmdiag.persist.save_reward_model`);
- `policies/<name>/`: `meta.json` (fingerprint, algorithm, temperature, steps, seconds) and
  `policy/` (`rmdiag.persist.save_policy`), one per trained policy (`sft`, `<algorithm>`, and
  `<algorithm>.<parameter>-<value>` per sweep point);
- `checkpoints/<name>.pt`: the training checkpoint of a policy being trained (`trainers.loop`),
  removed once the policy is saved.

Every stage directory is assembled in a hidden staging sibling and renamed into place, so it is
there whole or not at all, and carries its own fingerprint: a stage is reused only when the
fingerprint in its directory equals the one its inputs give now. A checkpoint is resumed only
when the record's fingerprint for its policy (written before training starts) matches; one whose
policy's inputs changed since is refused (`trainers.loop.CheckpointMismatch`, which `rmdiag`
exits 2 on, naming the inputs that differ) rather than silently thrown away with the training
it holds.

Under torchrun (`rmdiag.distributed`) rank 0 alone reads the record, decides and writes; the
other ranks ask it whether a stage is kept (and, for a policy, whether its checkpoint is to be
resumed: rank 0 removes a stale one before it answers), then load a kept stage themselves or
train it together with rank 0, which saves it. No rank but 0 ever writes here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rmdiag import distributed, persist
from rmdiag.audit import AuditResult
from rmdiag.outputs import to_json, write_atomic
from rmdiag.policies import TrainedPolicy
from trainers.loop import CheckpointMismatch

WORK_DIR = ".work"
RECORD_FILE = "stages.json"
RECORD_VERSION = 1
_STAGING = ".staging-"


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """sha256 of the inputs as canonical JSON (sorted keys)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A data file's resolved path, size, modification time (ns) and sha256."""
    resolved = Path(path).resolve()
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    info = resolved.stat()
    return {"path": str(resolved), "size": info.st_size, "mtime_ns": info.st_mtime_ns,
            "sha256": digest.hexdigest()}


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """The leaves in which two nested input records differ, as dotted names -> (old, new)."""
    found: dict[str, tuple[Any, Any]] = {}
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found |= differences(before, after, f"{prefix}{name}.")
        elif before != after:
            found[f"{prefix}{name}"] = (before, after)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class WorkDir:
    """`OUT/.work/`: read on `resume`, else removed and started afresh (module docstring);
    created when the first stage is recorded."""

    def __init__(self, out: str | os.PathLike[str], resume: bool) -> None:
        self.root = Path(out) / WORK_DIR
        # Rank 0 owns the directory; the others learn what is in it from rank 0 (`share`).
        self.owner = distributed.is_main()
        self.stages: dict[str, dict[str, Any]] = {}
        if not self.owner:
            return
        if not resume and self.root.exists():
            _remove(self.root)
        # created by the first stage that finishes: input refused by the audit leaves nothing
        for leftover in [*self.root.glob(f"{_STAGING}*"),
                         *self.root.glob(f"policies/{_STAGING}*"),
                         *self.root.glob("checkpoints/*.tmp")]:
            _remove(leftover)  # a stage or checkpoint killed (not interrupted) while written
        self.stages: dict[str, dict[str, Any]] = self._read_record() if resume else {}

    def _read_record(self) -> dict[str, dict[str, Any]]:
        try:
            record = json.loads((self.root / RECORD_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            return {}
        stages = record.get("stages")
        return stages if isinstance(stages, dict) else {}

    def record(self, name: str, inputs: Mapping[str, Any], *, done: bool,
               status: str = "computing") -> str:
        """Write the stage's entry (atomically, with the whole record); returns its fingerprint.
        Rank 0 only writes it."""
        key = fingerprint(inputs)
        self.stages[name] = {"fingerprint": key, "inputs": dict(inputs), "done": done,
                             "status": status}
        if not self.owner:
            return key
        write_atomic(self.root / RECORD_FILE,
                     to_json({"version": RECORD_VERSION, "stages": self.stages}))
        return key

    def recorded(self, name: str) -> str | None:
        entry = self.stages.get(name)
        return entry.get("fingerprint") if isinstance(entry, dict) else None

    @contextmanager
    def _assemble(self, target: Path) -> Iterator[Path]:
        """A staging directory beside `target` that replaces it at the end, whole."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{target.name}.", dir=target.parent))
        try:
            yield staging
            if target.exists():
                _remove(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @staticmethod
    def _stored_fingerprint(meta: Path) -> str | None:
        try:
            payload = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        return payload.get("fingerprint") if isinstance(payload, dict) else None

    # -- the audit ------------------------------------------------------------------------
    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    def has_audit(self, key: str) -> bool:
        """Whether the audit is kept with this fingerprint (rank 0's answer on every rank)."""
        return distributed.share(
            lambda: self._stored_fingerprint(self.audit_dir / "result.json") == key)

    def save_audit(self, result: AuditResult, key: str) -> None:
        if not self.owner:
            return
        arrays = {f"events.{k}": np.asarray(v) for k, v in result.events.items()}
        arrays |= {f"predictions.{k}": np.asarray(v) for k, v in result.predictions.items()}
        if any(a.dtype == object for a in arrays.values()):
            raise TypeError("audit arrays must be numeric to be kept without pickle")
        with self._assemble(self.audit_dir) as tmp:
            if result.ensemble is not None:
                persist.save_reward_model(result.ensemble, tmp / "ensemble")
            with open(tmp / "arrays.npz", "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]
            (tmp / "result.json").write_text(
                to_json({"fingerprint": key, "result": result.to_json()}))

    def load_audit(self) -> AuditResult:
        payload = json.loads((self.audit_dir / "result.json").read_text())
        with np.load(self.audit_dir / "arrays.npz", allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        ensemble = None
        if (self.audit_dir / "ensemble").exists():
            ensemble = persist.load_reward_model(self.audit_dir / "ensemble")
        return AuditResult.from_json(
            payload["result"],
            events={k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("events.")},
            predictions={k.split(".", 1)[1]: v for k, v in arrays.items()
                         if k.startswith("predictions.")},
            ensemble=ensemble,  # type: ignore[arg-type]
        )

    # -- policies -------------------------------------------------------------------------
    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.pt"

    def policy_dir(self, name: str) -> Path:
        return self.root / "policies" / name

    def policy(
        self, name: str, inputs: Mapping[str, Any], train: Callable[[str], TrainedPolicy]
    ) -> tuple[TrainedPolicy, bool]:
        """The policy `name`: loaded when saved with these inputs' fingerprint, else trained by
        `train(checkpoint_path)` (resuming that checkpoint when it belongs to these inputs) and
        saved. Returns it and whether it was reused."""
        key = fingerprint(inputs)
        # Rank 0 decides (and clears a stale checkpoint) before any rank looks at the disk, so
        # every rank resumes the same checkpoint or none and trains the same policies.
        if distributed.share(lambda: self._prepare_policy(name, inputs, key)):
            return self._load_policy(name), True
        checkpoint = self.checkpoint(name)
        policy = train(str(checkpoint))  # every rank: data-parallel under torchrun
        if not self.owner:
            return policy, False
        with self._assemble(self.policy_dir(name)) as tmp:
            persist.save_policy(policy.model, tmp / "policy", algorithm=policy.algorithm,
                                temperature=None)
            (tmp / "meta.json").write_text(to_json({
                "fingerprint": key, "name": policy.name, "algorithm": policy.algorithm,
                "temperature": policy.temperature, "steps": policy.steps,
                "train_seconds": policy.train_seconds,
            }))
        self.record(f"policy:{name}", inputs, done=True, status="computed")
        checkpoint.unlink(missing_ok=True)
        return policy, False

    def _prepare_policy(self, name: str, inputs: Mapping[str, Any], key: str) -> bool:
        """(Rank 0) True when the policy is kept with this fingerprint; else make way for its
        training: refuse an interrupted one under other inputs, drop another run's checkpoint
        and policy, record the training as started."""
        stage_name = f"policy:{name}"
        directory, checkpoint = self.policy_dir(name), self.checkpoint(name)
        if self._stored_fingerprint(directory / "meta.json") == key:
            self.record(stage_name, inputs, done=True, status="reused")
            return True
        recorded = self.stages.get(stage_name)
        if self.recorded(stage_name) != key:
            if (checkpoint.exists() and isinstance(recorded, dict) and not recorded.get("done")
                    and isinstance(recorded.get("inputs"), dict)):
                # An interrupted training under other settings: refused, not discarded unasked.
                raise CheckpointMismatch(
                    checkpoint, differences(recorded["inputs"], inputs),
                    advice="resume with the settings it was started with, or delete it (or run "
                    "without --resume) to train it afresh")
            checkpoint.unlink(missing_ok=True)  # another run's: not resumable into this one
        if directory.exists():
            _remove(directory)
        self.record(stage_name, inputs, done=False)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        return False

    def _load_policy(self, name: str) -> TrainedPolicy:
        directory = self.policy_dir(name)
        meta = json.loads((directory / "meta.json").read_text())
        model, _ = persist.load_policy(directory / "policy")
        return TrainedPolicy(meta["name"], meta["algorithm"],
                             {k: float(v) for k, v in meta["temperature"].items()}, model,
                             float(meta["train_seconds"]), int(meta["steps"]))
