"""The frozen OpenCLIP image and text towers, built from a model name and a local checkpoint.

Nothing is downloaded: ``checkpoint`` is a local file (open_clip's ``pretrained=`` accepts a path), and
without one the towers are randomly initialised from ``init_seed`` (tests, benchmarks), identically on
every worker. Both towers are frozen and kept in eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import TowerConfig

# huggingface_hub must never reach the network from here, whatever a model config asks for
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _register(cfg: TowerConfig) -> None:
    import open_clip

    for path in cfg.model_config_paths:
        if str(path) not in {str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS}:
            open_clip.add_model_config(path)


def tower_embed_dim(cfg: TowerConfig) -> int:
    import open_clip

    _register(cfg)
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ValueError(f"unknown OpenCLIP model {cfg.model!r} (add its config with tower.model_config_paths)")
    return int(model_cfg["embed_dim"])


class FrozenTowers(torch.nn.Module):
    def __init__(self, cfg: TowerConfig, device: torch.device | str = "cpu"):
        super().__init__()
        import open_clip

        _register(cfg)
        if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():
            raise FileNotFoundError(f"tower checkpoint {cfg.checkpoint} is not a local file")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            self.model = open_clip.create_model(
                cfg.model, pretrained=cfg.checkpoint, pretrained_text=False, pretrained_image=False,
                load_weights=cfg.checkpoint is not None, device=device,
            )  # fmt: skip
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        visual = self.model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        pre = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
        self.embed_dim = tower_embed_dim(cfg)

    def train(self, mode: bool = True):  # frozen: never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str], device) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def image_embedding(self, frames: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
        """The paired image's embedding: frame 0, or the mean of frames 0 and 1 where both exist."""
        e0 = self.encode_image(frames["frame0"])
        if mode == "first" or "frame1" not in frames:
            return e0
        e1 = self.encode_image(frames["frame1"])
        both = frames["frame1_mask"].view(-1, 1)
        return F.normalize(torch.where(both, (e0 + e1) / 2, e0), dim=-1)
