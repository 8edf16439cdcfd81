"""Typed configs of a training run: encoder sizes, the frozen tower, optimisation, data and the run itself.

    bindset train DATA RUN --config imagebind.json     # a JSON/YAML file of TrainConfig fields
    bindset train DATA RUN --preset tiny               # the named configs below

Named encoder configs are ImageBind's real sizes (``imagebind``) and a small one for tests and CPU demos
(``tiny``). Optimiser settings are per modality, as the paper trained each pair with its own recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from schemas.modalities import TRAINABLE

#: the modalities a run can train (schemas/modalities.py is their one home)
MODALITIES = TRAINABLE
#: ImageBind's fixed logit scales (1/temperature), models/imagebind_model.py postprocessors
LOGIT_SCALES = {"audio": 20.0, "depth": 5.0, "thermal": 10.0, "imu": 5.0}
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


@dataclass(frozen=True)
class EncoderConfig:
    """One modality's trunk: a ViT over patches (audio, depth, thermal) or over IMU chunks."""

    modality: str
    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    head_dropout: float = 0.0  # before the head's Linear (ImageBind: IMU 0.5)
    # 2-D patch stem (audio/depth/thermal): kernel `patch`, stride `stride` over a 1-channel input
    patch: int = 16
    stride: int = 16
    input_hw: tuple[int, int] = (224, 224)
    # IMU stem: unfold(imu_kernel) over time -> tokens of channels*kernel values
    imu_channels: int = 6
    imu_steps: int = 2000
    imu_kernel: int = 8

    @property
    def logit_scale(self) -> float:
        return LOGIT_SCALES[self.modality]

    def tokens(self) -> int:
        if self.modality == "imu":
            return self.imu_steps // self.imu_kernel
        h, w = self.input_hw
        return ((h - self.patch) // self.stride + 1) * ((w - self.patch) // self.stride + 1)


#: width, layers, heads. ImageBind (imagebind_model.py, imagebind_huge): audio 768/12/12 (drop path 0.1),
#: depth 384/12/8, thermal 768/12/12, IMU 512/6/8 (drop path 0.7, head dropout 0.5).
ENCODER_PRESETS: dict[str, dict[str, EncoderConfig]] = {
    "imagebind": {
        "audio": EncoderConfig("audio", 768, 12, 12, drop_path=0.1, stride=10, input_hw=(128, 204)),
        "depth": EncoderConfig("depth", 384, 12, 8),
        "thermal": EncoderConfig("thermal", 768, 12, 12),
        "imu": EncoderConfig("imu", 512, 6, 8, drop_path=0.7, head_dropout=0.5),
    },
    "tiny": {
        "audio": EncoderConfig("audio", 64, 2, 2, stride=10, input_hw=(128, 204)),
        "depth": EncoderConfig("depth", 64, 2, 2),
        "thermal": EncoderConfig("thermal", 64, 2, 2),
        "imu": EncoderConfig("imu", 64, 2, 2),
    },
    # tiny widths over coarser token grids (audio 8x12, depth and thermal 7x7, IMU 50 chunks of 40 steps):
    # 4x fewer tokens, for CPU runs that must train to convergence in minutes (tests/test_emergent_proof.py)
    "coarse": {
        "audio": EncoderConfig("audio", 64, 2, 2, stride=16, input_hw=(128, 204)),
        "depth": EncoderConfig("depth", 64, 2, 2, patch=32, stride=32),
        "thermal": EncoderConfig("thermal", 64, 2, 2, patch=32, stride=32),
        "imu": EncoderConfig("imu", 64, 2, 2, imu_kernel=40),
    },
}


@dataclass(frozen=True)
class TowerConfig:
    """The frozen OpenCLIP image and text towers. Weights come from a local file, never from the network."""

    model: str = "ViT-H-14"
    checkpoint: str | None = None  # local .safetensors/.bin/.pt; None = random init (tests, benchmarks)
    # extra OpenCLIP model-config JSON files or folders to register (for custom/tiny architectures)
    model_config_paths: tuple[str, ...] = ()
    init_seed: int = 0  # random init only: the same seed gives the same frozen tower everywhere


@dataclass(frozen=True)
class OptimConfig:
    """AdamW per modality. Defaults: ImageBind's per-pair recipe (SPEC §3)."""

    lr: float = 1.6e-3
    weight_decay: float = 0.2


PAPER_OPTIM = {
    "audio": OptimConfig(1.6e-3, 0.2),
    "depth": OptimConfig(1.6e-3, 0.2),
    "thermal": OptimConfig(5e-4, 0.05),
    "imu": OptimConfig(5e-4, 0.5),
}


@dataclass(frozen=True)
class DataConfig:
    train_split: str = "train"
    loader_workers: int = 2  # DataLoader processes per training worker
    prefetch_factor: int = 4
    pin_memory: bool = True  # on a GPU: batches copied to page-locked memory by the loader's pin thread
    augment: bool = True  # random resized crop + flip of the paired frames (off when embeddings are cached)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    image_frames: Literal["first", "mean"] = "mean"  # embed frame 0, or average frames 0 and 1
    depth_mode: Literal["disparity", "metric"] = "disparity"
    depth_max_m: float = 50.0
    disparity_scale: float = 0.1  # divides baseline*fx/depth to bring it near [0, 1]
    # the depth input is then (x - mean) / std. (0, 1) is Omnivore's (ImageBind's depth recipe: Normalize
    # with mean 0, std 1 on the depth channel). The encoders' stem (a bias-free patch conv, then LayerNorm)
    # makes each token blind to its patch's overall scale, so on uncentred input a patch of even depth looks
    # the same at every distance and only edges say how far things are; centring on the data's mean keeps
    # the distance. "auto": the mean and std of the training split's depth inputs, fitted by `train` before
    # the run and written into its config (so embed and resumes use the same numbers).
    depth_norm: tuple[float, float] | Literal["auto"] = (0.0, 1.0)
    default_fx: float = 518.857  # used when a sample has no intrinsics (Kinect v1, SUN RGB-D)
    default_baseline_m: float = 0.075
    # "disjoint": each training session feeds exactly one modality pair (ImageBind's setting: pairs never
    # seen together in training); "joint": every sample trains every modality it carries
    pairing: Literal["joint", "disjoint"] = "joint"
    cache_image_embeddings: bool = False
    # negative control: pair every training sample with another sample's image (a fixed random
    # permutation); needs cached image embeddings. Retrieval must then fall to chance.
    shuffle_pairs: bool = False

    def __post_init__(self):
        norm = self.depth_norm
        if norm != "auto" and not (isinstance(norm, tuple | list) and len(norm) == 2 and float(norm[1]) > 0):
            raise ValueError(f"data.depth_norm must be 'auto' or [mean, std] with std > 0, got {norm!r}")


@dataclass(frozen=True)
class TrainConfig:
    encoders: str = "tiny"  # a key of ENCODER_PRESETS
    modalities: tuple[str, ...] = MODALITIES
    tower: TowerConfig = field(default_factory=TowerConfig)
    optim: dict[str, OptimConfig] = field(default_factory=lambda: dict(PAPER_OPTIM))
    betas: tuple[float, float] = (0.9, 0.95)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 64  # per training worker; the loss sees batch_size * workers
    epochs: int = 4
    max_steps: int | None = None  # stop early (counted over all epochs)
    warmup_epochs: float = 2.0
    checkpoint_every: int = 100  # steps
    checkpoint_at_epoch_end: bool = True
    keep_checkpoints: int = 3
    max_failures: int = 3  # Ray Train FailureConfig
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        if self.encoders not in ENCODER_PRESETS:
            raise ValueError(f"unknown encoder preset {self.encoders!r}; choose one of {sorted(ENCODER_PRESETS)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (a contrastive loss needs negatives)")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if self.data.shuffle_pairs and not self.data.cache_image_embeddings:
            raise ValueError("data.shuffle_pairs (the negative control) needs data.cache_image_embeddings")

    def encoder(self, modality: str) -> EncoderConfig:
        return ENCODER_PRESETS[self.encoders][modality]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        _check_names(cls, data, "train config")
        if "tower" in data:
            _check_names(TowerConfig, data["tower"], "tower")
            t = dict(data["tower"])
            t["model_config_paths"] = tuple(t.get("model_config_paths", ()))
            data["tower"] = TowerConfig(**t)
        if "data" in data:
            _check_names(DataConfig, data["data"], "data")
            d = dict(data["data"])
            if "crop_scale" in d:
                d["crop_scale"] = tuple(d["crop_scale"])
            if isinstance(d.get("depth_norm"), list):
                d["depth_norm"] = tuple(d["depth_norm"])
            data["data"] = DataConfig(**d)
        if "optim" in data:
            optim = dict(PAPER_OPTIM)
            for m, o in data["optim"].items():
                _check_names(OptimConfig, o, f"optim.{m}")
                optim[m] = OptimConfig(**o)
            data["optim"] = optim
        for name in ("modalities", "betas"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    @classmethod
    def from_file(cls, path: Path | str) -> TrainConfig:
        path = Path(path)
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
            return cls.from_dict(data or {})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: invalid train config: {exc}") from None


def _check_names(cls, data: dict, what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be an object")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")


def tiny_tower() -> TowerConfig:
    """A tiny random-init OpenCLIP config shipped with bindset, for tests and CPU demos."""
    return TowerConfig(model="bindset-tiny-clip", model_config_paths=(str(MODEL_CONFIG_DIR),))


PRESETS: dict[str, TrainConfig] = {
    # tests: tiny encoders, tiny random-init tower, cached image embeddings
    "tiny": TrainConfig(encoders="tiny", tower=tiny_tower(), batch_size=32, epochs=30, warmup_epochs=1.0,
                        checkpoint_every=50, optim={m: OptimConfig(1e-3, 0.05) for m in MODALITIES},
                        data=DataConfig(loader_workers=1, cache_image_embeddings=True, augment=False,
                                        depth_norm="auto")),
    # the emergent-alignment proof (tests/test_emergent_proof.py) and `make demo`: coarse tiny encoders trained
    # to convergence in ~2 min on 2 cores, ImageBind's setting of every training session feeding one pair only
    "proof": TrainConfig(encoders="coarse", tower=tiny_tower(), batch_size=128, epochs=10**6, max_steps=700,
                         warmup_epochs=10.0, checkpoint_every=10**6, checkpoint_at_epoch_end=False,
                         optim={m: OptimConfig(2e-3, 0.05) for m in MODALITIES},
                         data=DataConfig(loader_workers=0, cache_image_embeddings=True, augment=False,
                                         depth_norm="auto", pairing="disjoint")),
    # ImageBind's sizes against OpenCLIP ViT-H-14 (pass tower.checkpoint: a local open_clip checkpoint file)
    "imagebind": TrainConfig(encoders="imagebind", batch_size=512, epochs=16, precision="bf16",
                             data=DataConfig(loader_workers=8)),
}  # fmt: skip
