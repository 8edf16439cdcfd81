"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A checkpoint folder holds ``model.safetensors`` (the encoders), ``optimizer.safetensors`` (AdamW moments,
keyed ``<param index>.<name>``), and ``state.json`` (step, epoch, the optimizer's param groups, the
config). Folders are written under a temporary name, fsynced, then renamed, so a reader never sees half
a checkpoint; ``latest`` picks the highest step among complete ones.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipelines import storage

MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


@dataclass(frozen=True)
class TrainState:
    step: int
    epoch: int  # epochs completed
    step_in_epoch: int
    config: dict
    metrics: dict


def write_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                     state: TrainState) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, folder / MODEL)
    extra = {}
    if optimizer is not None:
        opt = optimizer.state_dict()
        tensors = {}
        for pid, entries in opt["state"].items():
            for name, value in entries.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"{pid}.{name}"] = t.detach().contiguous().cpu()
        save_file(tensors, folder / OPTIMIZER)
        extra["param_groups"] = opt["param_groups"]
    payload = {"step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
               "config": state.config, "metrics": state.metrics, **extra}  # fmt: skip
    (folder / STATE).write_text(json.dumps(payload, indent=1, sort_keys=True, default=float) + "\n")
    storage.fsync_tree(folder)
    return folder


def read_state(folder: Path) -> TrainState:
    s = json.loads((Path(folder) / STATE).read_text())
    return TrainState(s["step"], s["epoch"], s["step_in_epoch"], s["config"], s.get("metrics", {}))


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu") -> TrainState:  # fmt: skip
    folder = Path(folder)
    model.load_state_dict(load_file(folder / MODEL, device=str(map_location)))
    state = json.loads((folder / STATE).read_text())
    if optimizer is not None and (folder / OPTIMIZER).exists():
        flat = load_file(folder / OPTIMIZER, device=str(map_location))
        per_param: dict[int, dict] = {}
        for k, v in flat.items():
            pid, name = k.split(".", 1)
            per_param.setdefault(int(pid), {})[name] = v
        # JSON has no tuples; AdamW's betas are one
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in state["param_groups"]]
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    return read_state(folder)


class CheckpointDir:
    """RUN/checkpoints/ckpt-<step>: atomic writes, latest lookup, keep the newest ``keep``."""

    def __init__(self, root: Path, keep: int = 3):
        self.root, self.keep = Path(root), keep

    def commit(self, tmp: Path, step: int) -> Path:
        final = storage.replace_dir(tmp, self.root / f"ckpt-{step:09d}")
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def staging(self) -> Path:
        return self.root / f".tmp-{uuid.uuid4().hex[:8]}"

    def complete(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.glob("ckpt-*") if (p / STATE).exists() and (p / MODEL).exists())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None
