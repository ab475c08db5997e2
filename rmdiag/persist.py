"""Saving and loading fitted reward models and trained policies, without pickle.

A saved model is a directory:

- ``model.json``: the format name and version, the kind, the constructor parameters and the
  fitted scalar attributes (plus, for a policy, its ``ModelConfig``, algorithm and temperature);
- ``arrays.npz``: the fitted numpy arrays / CPU tensors, read with ``allow_pickle=False``;
- ``weights.pt``: a torch ``state_dict`` (tensors only), read with ``weights_only=True``;
- ``booster.txt``: a LightGBM booster as its model text;
- ``ids.json``: the log's raw ids (``user_ids`` / ``item_ids``), only when the caller gives them;
- ``members/0``, ``members/1``, ...: one such directory per member of a ``RewardEnsemble``.

What each class keeps is written down in ``_SPECS`` below (no generic ``__dict__`` dumping):
constructor parameters, scalars, arrays and tensors by name, and the LightGBM booster or the torch
network as their own file. A directory is written into a temp sibling and renamed onto the target
at the end, so a failed save leaves neither; anything unreadable on load (wrong format version,
missing or garbled file, a pickled object in ``weights.pt``) raises ``rmdiag.data.DataError``
naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import torch

from rmdiag.data import DataError
from rmdiag.rewards import REWARD_MODELS, RewardEnsemble, RewardModel
from rmdiag.rewards.lightgbm_model import FEATURES
from rmdiag.rewards.sequence_model import _RewardTransformer
from trainers.model import ModelConfig, SequentialRecommender

REWARD_FORMAT = "rmdiag.reward_model"
POLICY_FORMAT = "rmdiag.policy"
FORMAT_VERSION = 1

MODEL_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
WEIGHTS_FILE = "weights.pt"
BOOSTER_FILE = "booster.txt"
IDS_FILE = "ids.json"
MEMBERS_DIR = "members"

Ids = tuple[Sequence[Any] | np.ndarray, Sequence[Any] | np.ndarray]


@dataclass(frozen=True)
class _Spec:
    """What one reward-model class needs saved besides its constructor parameters."""

    scalars: tuple[str, ...] = ()  # float/int attributes, in model.json
    arrays: tuple[str, ...] = ()  # numpy arrays, in arrays.npz
    tensors: tuple[str, ...] = ()  # CPU tensors, in arrays.npz (restored as tensors)
    booster: bool = False  # booster_ (LightGBM), in booster.txt
    network: bool = False  # network_ (SequenceRewardModel), in weights.pt


_SPECS: dict[str, _Spec] = {
    "global_mean": _Spec(scalars=("mean_",)),
    "user_mean": _Spec(scalars=("global_mean_", "shrinkage_"), tensors=("means_",)),
    "item_mean": _Spec(scalars=("global_mean_", "shrinkage_"), tensors=("means_",)),
    "bias": _Spec(
        scalars=("global_mean_", "user_reg_", "item_reg_"), tensors=("user_bias_", "item_bias_")
    ),
    "lightgbm": _Spec(
        scalars=("global_mean_",),
        arrays=(
            "item_count_",
            "user_count_",
            "item_mean_",
            "user_mean_",
            "item_age_",
            "item_recent_share_",
            "item_embeddings_",
        ),
        booster=True,
    ),
    "sequence": _Spec(scalars=("mean_", "scale_", "n_items_"), network=True),
    # history_len of an ensemble is fitted (the longest member's), not a constructor parameter.
    "ensemble": _Spec(scalars=("history_len",)),
}
_INT_SCALARS = frozenset({"n_items_", "history_len"})
_ARRAY_NDIM = {"item_embeddings_": 2}  # every other array is a vector indexed by encoded id


def _classes() -> dict[str, type[RewardModel]]:
    return {**REWARD_MODELS, "ensemble": RewardEnsemble}


# -- atomic directories ----------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextmanager
def _atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp sibling of ``directory``; on success it replaces ``directory``.

    On any failure the temp directory is removed and ``directory`` is left as it was. An
    existing target is moved aside first (``os.replace`` cannot rename onto a non-empty
    directory), then removed once the new one is in place; only a crash between those two
    renames can leave the target missing, with the old model in a ``.<name>.*.old`` sibling.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        # mkdtemp's private 0700 would hide the saved model from the rest of a team's group.
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_tree(tmp)
        old = None
        if target.exists() or target.is_symlink():
            if not target.is_dir():
                raise FileExistsError(f"{target} exists and is not a directory")
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            try:
                os.replace(target, old)  # a directory renames onto an empty one
            except BaseException:
                old.rmdir()
                raise
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- writers ---------------------------------------------------------------------------------
def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _write_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    torch.save({key: value.detach().cpu().clone() for key, value in state_dict.items()}, path)


def _write_booster(path: Path, booster: lgb.Booster) -> None:
    path.write_text(booster.model_to_string(), encoding="utf-8")


def _json_scalar(name: str, value: Any) -> int | float | str | bool | None:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"cannot save {name}={value}: not a finite number")
        return value
    raise TypeError(f"cannot save {name}={value!r}: not a JSON scalar")


def _json_value(name: str, value: Any) -> Any:
    """A constructor parameter as JSON: scalars, lists/tuples and string-keyed dicts of them."""
    if isinstance(value, list | tuple):
        return [_json_value(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot save {name}: dictionary keys must be strings")
        return {k: _json_value(f"{name}.{k}", v) for k, v in value.items()}
    return _json_scalar(name, value)


def _constructor_params(model: RewardModel) -> dict[str, Any]:
    names = [
        name
        for name, parameter in inspect.signature(type(model).__init__).parameters.items()
        if name != "self" and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]
    return {name: _json_value(name, getattr(model, name)) for name in names}


def _ids_payload(ids: Ids) -> dict[str, Any]:
    user_ids, item_ids = ids
    return {"user_ids": _id_list("user_ids", user_ids), "item_ids": _id_list("item_ids", item_ids)}


def _id_list(name: str, values: Sequence[Any] | np.ndarray) -> list[Any]:
    out: list[Any] = []
    for i, value in enumerate(list(values)):
        if i == 0 and value is None:  # the padding placeholder of string ids
            out.append(None)
        elif isinstance(value, str):
            out.append(value)
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            out.append(int(value))
        else:
            raise TypeError(f"cannot save {name}[{i}]={value!r}: ids must be strings or ints")
    return out


def _write_reward_model(model: RewardModel, directory: Path) -> None:
    classes = _classes()
    kind = getattr(model, "kind", None)
    if kind not in _SPECS or type(model) is not classes[kind]:
        raise TypeError(
            f"cannot save a {type(model).__name__}: rmdiag.persist saves "
            f"{', '.join(cls.__name__ for cls in classes.values())} only"
        )
    model._check_fitted()
    spec = _SPECS[kind]
    state = {name: _json_scalar(name, getattr(model, name)) for name in spec.scalars}
    files = [MODEL_FILE]
    arrays = {name: np.asarray(getattr(model, name)) for name in spec.arrays}
    arrays |= {name: getattr(model, name).detach().cpu().numpy() for name in spec.tensors}
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise TypeError(f"cannot save {name}: dtype {array.dtype} is not numeric")
    if arrays:
        _write_arrays(directory / ARRAYS_FILE, arrays)
        files.append(ARRAYS_FILE)
    if spec.booster:
        _write_booster(directory / BOOSTER_FILE, model.booster_)
        files.append(BOOSTER_FILE)
    if spec.network:
        _write_weights(directory / WEIGHTS_FILE, model.network_.state_dict())
        files.append(WEIGHTS_FILE)
    n_members = 0
    if isinstance(model, RewardEnsemble):
        (directory / MEMBERS_DIR).mkdir()
        for m, member in enumerate(model.members_):
            member_dir = directory / MEMBERS_DIR / str(m)
            member_dir.mkdir()
            _write_reward_model(member, member_dir)
        n_members = len(model.members_)
    payload: dict[str, Any] = {
        "format": REWARD_FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "params": _constructor_params(model),
        "state": state,
        "arrays": sorted(arrays),
        "files": files,
    }
    if isinstance(model, RewardEnsemble):
        payload["n_members"] = n_members
    _write_json(directory / MODEL_FILE, payload)


def save_reward_model(
    model: RewardModel, directory: str | os.PathLike[str], *, ids: Ids | None = None
) -> Path:
    """Save a fitted reward model (any kind of ``REWARD_MODELS``, or a ``RewardEnsemble``).

    ``ids=(user_ids, item_ids)`` (``Interactions.user_ids`` / ``item_ids``: raw id of encoded id
    i at index i) go to ``ids.json``. An existing ``directory`` is replaced; on failure it is
    left untouched and nothing else is written. Returns the directory.
    """
    payload = _ids_payload(ids) if ids is not None else None
    with _atomic_directory(directory) as tmp:
        _write_reward_model(model, tmp)
        if payload is not None:
            _write_json(tmp / IDS_FILE, payload)
    return Path(directory)


def save_policy(
    model: SequentialRecommender,
    directory: str | os.PathLike[str],
    *,
    algorithm: str,
    temperature: float | None,
    ids: Ids | None = None,
) -> Path:
    """Save a trained policy: its ``ModelConfig`` and metadata as JSON, its weights as a
    ``state_dict``. Atomic like ``save_reward_model``; returns the directory."""
    if not isinstance(model, SequentialRecommender):
        raise TypeError(f"cannot save a {type(model).__name__} as a policy")
    if not isinstance(algorithm, str) or not algorithm:
        raise ValueError(f"algorithm must be a non-empty string, got {algorithm!r}")
    payload = {
        "format": POLICY_FORMAT,
        "version": FORMAT_VERSION,
        "algorithm": algorithm,
        "temperature": _json_scalar("temperature", temperature),
        "config": dataclasses.asdict(model.config),
        "files": [MODEL_FILE, WEIGHTS_FILE],
    }
    ids_payload = _ids_payload(ids) if ids is not None else None
    with _atomic_directory(directory) as tmp:
        _write_weights(tmp / WEIGHTS_FILE, model.state_dict())
        if ids_payload is not None:
            _write_json(tmp / IDS_FILE, ids_payload)
        _write_json(tmp / MODEL_FILE, payload)
    return Path(directory)


# -- readers ---------------------------------------------------------------------------------
def _refuse(path: Path, why: str) -> DataError:
    return DataError(why, source=str(path))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _refuse(path, "missing file")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refuse(path, f"not readable JSON ({error})") from error
    if not isinstance(payload, dict):
        raise _refuse(path, "not a JSON object")
    return payload


def _read_header(directory: Path, expected_format: str) -> dict[str, Any]:
    if not directory.is_dir():
        raise _refuse(directory, "no such directory")
    path = directory / MODEL_FILE
    payload = _read_json(path)
    if payload.get("format") != expected_format:
        raise _refuse(
            path, f"format is {payload.get('format')!r}, expected {expected_format!r}"
        )
    if payload.get("version") != FORMAT_VERSION:
        raise _refuse(
            path,
            f"format version {payload.get('version')!r} is not supported "
            f"(this rmdiag reads version {FORMAT_VERSION})",
        )
    return payload


def _field(payload: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in payload:
        raise _refuse(path, f"missing key {key!r}")
    value = payload[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _refuse(path, f"key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _read_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise _refuse(path, "missing file")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as error:  # neither .npz nor .npy: numpy would unpickle it, refused
        raise _refuse(path, f"refused: not an .npz archive of plain arrays ({error})") from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise _refuse(path, f"not a readable .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _refuse(path, "not an .npz archive (a single .npy array)")
    with archive:
        missing = sorted(set(names) - set(archive.files))
        if missing:
            raise _refuse(path, f"missing arrays {missing}")
        arrays = {}
        for name in names:
            try:
                arrays[name] = archive[name]
            except ValueError as error:  # an object array needs pickle, which is refused
                raise _refuse(
                    path, f"refused: array {name!r} holds pickled objects ({error})"
                ) from error
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise _refuse(path, f"array {name!r} is not readable ({error})") from error
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise _refuse(path, f"array {name!r} has dtype {array.dtype}, expected numbers")
    return arrays


def _unpickler_reason(error: Exception) -> str:
    """The one line of torch's weights-only refusal that says why (its message also suggests
    ``weights_only=False``, which rmdiag never does)."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s+Please use|\n\n|$)", text, re.S)
    reason = found.group(1) if found else text.splitlines()[0] if text else type(error).__name__
    return " ".join(reason.split())


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise _refuse(path, "missing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # a pickled object (or garbage) that is not tensors
        raise _refuse(
            path,
            "refused: not a tensors-only torch file, torch.load(weights_only=True) failed: "
            f"{_unpickler_reason(error)}",
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise _refuse(path, f"not a readable torch state_dict ({error})") from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _refuse(path, "not a state_dict (a dict of names to tensors)")
    return state


def _load_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise _refuse(path, f"weights do not fit the model ({error})") from error


def _read_booster(path: Path) -> lgb.Booster:
    if not path.is_file():
        raise _refuse(path, "missing file")
    try:
        booster = lgb.Booster(model_str=path.read_text(encoding="utf-8"))
    except (lgb.basic.LightGBMError, OSError, UnicodeDecodeError, ValueError) as error:
        raise _refuse(path, f"not a readable LightGBM model ({error})") from error
    if booster.num_feature() != len(FEATURES):
        raise _refuse(
            path, f"booster has {booster.num_feature()} features, expected {len(FEATURES)}"
        )
    return booster


def _construct(cls: type, params: dict[str, Any], path: Path) -> Any:
    try:
        return cls(**params)
    except (TypeError, ValueError) as error:
        raise _refuse(path, f"parameters do not fit {cls.__name__} ({error})") from error


def _read_reward_model(directory: Path) -> RewardModel:
    header = _read_header(directory, REWARD_FORMAT)
    path = directory / MODEL_FILE
    classes = _classes()
    kind = _field(header, "kind", str, path)
    if kind not in _SPECS:
        raise _refuse(path, f"unknown reward model kind {kind!r}; known: {sorted(_SPECS)}")
    spec = _SPECS[kind]
    params = _field(header, "params", dict, path)
    state = _field(header, "state", dict, path)
    model = _construct(classes[kind], params, path)
    for name in spec.scalars:
        value = _field(state, name, int if name in _INT_SCALARS else (int, float), path)
        setattr(model, name, value if name in _INT_SCALARS else float(value))
    names = [*spec.arrays, *spec.tensors]
    if names:
        arrays = _read_arrays(directory / ARRAYS_FILE, names)
        for name, array in arrays.items():
            ndim = _ARRAY_NDIM.get(name, 1)
            if array.ndim != ndim:
                why = f"array {name!r} has {array.ndim} dimensions, expected {ndim}"
                raise _refuse(directory / ARRAYS_FILE, why)
        for name in spec.arrays:
            setattr(model, name, arrays[name])
        for name in spec.tensors:
            setattr(model, name, torch.from_numpy(arrays[name]))
    if spec.booster:
        model.booster_ = _read_booster(directory / BOOSTER_FILE)
    if spec.network:
        try:
            network = _RewardTransformer(
                model.n_items_, model.dim, model.n_layers, model.n_heads, model.dropout
            )
        except (TypeError, ValueError, RuntimeError) as error:
            raise _refuse(path, f"parameters do not build the network ({error})") from error
        weights = directory / WEIGHTS_FILE
        _load_state_dict(network, _read_weights(weights), weights)
        network.eval()
        model.network_ = network
    if isinstance(model, RewardEnsemble):
        n_members = _field(header, "n_members", int, path)
        if n_members < 1:
            raise _refuse(path, f"an ensemble needs at least one member, got {n_members}")
        model.members_ = [
            _read_reward_model(directory / MEMBERS_DIR / str(m)) for m in range(n_members)
        ]
    model.fitted_ = True
    return model


def load_reward_model(directory: str | os.PathLike[str]) -> RewardModel:
    """A fitted reward model saved by ``save_reward_model``; ``DataError`` if unreadable."""
    return _read_reward_model(Path(directory))


def load_ids(directory: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(user_ids, item_ids)`` saved with a model or policy, or None if none were.

    Integer ids come back as int64 arrays, string ids as object arrays (None at index 0), as
    ``rmdiag.data.encode`` builds them.
    """
    path = Path(directory) / IDS_FILE
    if not path.exists():
        return None
    payload = _read_json(path)
    out = []
    for key in ("user_ids", "item_ids"):
        values = _field(payload, key, list, path)
        rest = values[1:]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            try:
                out.append(np.asarray(values, dtype=np.int64))
            except OverflowError as error:
                raise _refuse(path, f"{key!r} holds ints beyond int64 ({error})") from error
        elif all(isinstance(v, str) for v in rest) and (
            not values or values[0] is None or isinstance(values[0], str)
        ):
            array = np.empty(len(values), dtype=object)
            array[:] = values
            out.append(array)
        else:
            raise _refuse(path, f"{key!r} must be a list of ints or of strings")
    return out[0], out[1]


def load_policy(
    directory: str | os.PathLike[str],
) -> tuple[SequentialRecommender, dict[str, Any]]:
    """A policy saved by ``save_policy``, in eval mode on the CPU, and its metadata:
    ``algorithm``, ``temperature``, ``config`` (the ``ModelConfig`` as a dict), ``ids`` (as
    ``load_ids`` returns them, None when none were saved), ``format``, ``version``.
    ``DataError`` if unreadable."""
    directory = Path(directory)
    header = _read_header(directory, POLICY_FORMAT)
    path = directory / MODEL_FILE
    algorithm = _field(header, "algorithm", str, path)
    temperature = header.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        raise _refuse(path, "key 'temperature' must be a number or null")
    config_dict = _field(header, "config", dict, path)
    config = _construct(ModelConfig, config_dict, path)
    model = SequentialRecommender(config)
    weights = directory / WEIGHTS_FILE
    _load_state_dict(model, _read_weights(weights), weights)
    model.eval()
    metadata = {
        "format": POLICY_FORMAT,
        "version": FORMAT_VERSION,
        "algorithm": algorithm,
        "temperature": None if temperature is None else float(temperature),
        "config": dataclasses.asdict(config),
        "ids": load_ids(directory),
    }
    return model, metadata
