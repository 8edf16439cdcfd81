"""The trainable modality encoders (ImageBind, models/imagebind_model.py and multimodal_preprocessors.py).

Each encoder: a stem that turns the input into tokens (a strided patch conv for the mel, depth and thermal;
``unfold(8)`` into 250 tokens of 6x8=48 values and a Linear for the IMU), LayerNorm, a CLS token and learned
positions, pre-norm transformer blocks, then the head LayerNorm -> CLS -> Linear to the shared dimension,
L2-normalised. The fixed logit scale is applied in the loss, not folded into the embedding, so stored
embeddings are unit vectors that any index can compare with the image tower's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath  # stochastic depth per sample (ImageBind: audio 0.1, IMU 0.7)
from torch import nn

from training.config import EncoderConfig


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # scaled_dot_product_attention picks flash/memory-efficient kernels on a GPU
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.drop_path(self.proj(a))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchStem(nn.Module):
    """1-channel image-like input (mel 1x128x204, depth or thermal 1x224x224) -> tokens."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(1, cfg.width, kernel_size=cfg.patch, stride=cfg.stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.cfg.input_hw:
            raise ValueError(f"{self.cfg.modality} input must be Bx1x{self.cfg.input_hw}, got {tuple(x.shape)}")
        return self.conv(x).flatten(2).transpose(1, 2)


class ImuStem(nn.Module):
    """Bx6x2000 -> unfold(8) -> Bx250x48 -> Linear (ImageBind: no bias)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(cfg.imu_channels * cfg.imu_kernel, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = self.cfg.imu_channels, self.cfg.imu_kernel
        if x.shape[1:] != (c, self.cfg.imu_steps):
            raise ValueError(f"imu input must be Bx{c}x{self.cfg.imu_steps}, got {tuple(x.shape)}")
        t = x.unfold(-1, k, k)  # B x C x T/k x k
        return self.linear(t.permute(0, 2, 1, 3).reshape(x.shape[0], -1, c * k))


class ModalityEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.stem = ImuStem(cfg) if cfg.modality == "imu" else PatchStem(cfg)
        self.stem_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(torch.zeros(1, cfg.tokens() + 1, cfg.width))
        rates = torch.linspace(0, cfg.drop_path, cfg.layers).tolist()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, r) for r in rates)
        self.head_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(cfg.width, out_dim, bias=False)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem_norm(self.stem(x))
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        cls = self.head_norm(x)[:, 0]
        return F.normalize(self.head(self.head_dropout(cls)), dim=-1)

    def flops_per_sample(self) -> float:
        """Forward matmul FLOPs (2 per multiply-add) of one sample, for MFU."""
        c, n, L = self.cfg.width, self.cfg.tokens() + 1, self.cfg.layers
        hidden = int(c * self.cfg.mlp_ratio)
        per_block = 2 * n * (3 * c * c + c * c + 2 * c * hidden) + 2 * 2 * n * n * c
        stem_in = self.cfg.imu_channels * self.cfg.imu_kernel if self.cfg.modality == "imu" else self.cfg.patch**2
        return float(L * per_block + 2 * (n - 1) * stem_in * c + 2 * c * self.head.out_features)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class BindingModel(nn.Module):
    """The trainable part of a run: one encoder per modality, all projecting into the tower's space."""

    def __init__(self, configs: dict[str, EncoderConfig], out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.encoders = nn.ModuleDict({m: ModalityEncoder(c, out_dim) for m, c in configs.items()})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](x) for m, x in inputs.items() if m in self.encoders}
