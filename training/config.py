"""Typed configs of a training run: encoder sizes, the frozen tower, optimisation, data and the run itself.

    bindset train DATA RUN --config imagebind.json     # a JSON/YAML file of TrainConfig fields
    bindset train DATA RUN --preset tiny               # the named configs below

Named encoder configs are ImageBind's real sizes (``imagebind``) and a small one for tests and CPU demos
(``tiny``). Optimiser settings are per modality, as the paper trained each pair with its own recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.config import StrictConfig, add_config_flags, given_flags, merge, read_mapping, tuple_field
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


class TowerConfig(StrictConfig):
    """The frozen OpenCLIP image and text towers. Weights come from a local file, never from the network."""

    model: str = Field("ViT-H-14", description="OpenCLIP model name of the frozen image and text towers")
    checkpoint: str | None = Field(
        None, description="local OpenCLIP checkpoint file (.safetensors/.bin/.pt); none: random init (tests)"
    )
    model_config_paths: tuple_field(tuple[str, ...]) = Field(
        (), description="extra OpenCLIP model-config JSON files or folders to register (custom/tiny architectures)"
    )
    init_seed: int = Field(0, description="random init only: the same seed gives the same frozen tower everywhere")


class OptimConfig(StrictConfig):
    """AdamW per modality. Defaults: ImageBind's per-pair recipe (SPEC §3)."""

    lr: float = Field(1.6e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.2, ge=0, description="AdamW weight decay")


PAPER_OPTIM = {
    "audio": OptimConfig(lr=1.6e-3, weight_decay=0.2),
    "depth": OptimConfig(lr=1.6e-3, weight_decay=0.2),
    "thermal": OptimConfig(lr=5e-4, weight_decay=0.05),
    "imu": OptimConfig(lr=5e-4, weight_decay=0.5),
}


class DataConfig(StrictConfig):
    train_split: str = Field("train", description="the split trained on")
    loader_workers: int = Field(2, ge=0, description="DataLoader processes per training worker")
    prefetch_factor: int = Field(4, ge=1, description="batches each loader process prepares ahead")
    pin_memory: bool = Field(
        True, description="on a GPU: batches copied to page-locked memory by the loader's pin thread"
    )
    augment: bool = Field(
        True, description="random resized crop + flip of the paired frames (off when embeddings are cached)"
    )
    crop_scale: tuple_field(tuple[float, float]) = Field((0.5, 1.0), description="random resized crop's area range")
    image_frames: Literal["first", "mean"] = Field(
        "mean", description="embed frame 0 (first), or average frames 0 and 1 (mean)"
    )
    depth_mode: Literal["disparity", "metric"] = Field(
        "disparity", description="depth input: disparity baseline*fx/depth (Omnivore) or clipped metric depth"
    )
    depth_max_m: float = Field(50.0, gt=0, description="depth clip (m)")
    disparity_scale: float = Field(0.1, gt=0, description="divides baseline*fx/depth to bring it near [0, 1]")
    # the depth input is then (x - mean) / std. (0, 1) is Omnivore's (ImageBind's depth recipe: Normalize
    # with mean 0, std 1 on the depth channel). The encoders' stem (a bias-free patch conv, then LayerNorm)
    # makes each token blind to its patch's overall scale, so on uncentred input a patch of even depth looks
    # the same at every distance and only edges say how far things are; centring on the data's mean keeps
    # the distance. "auto": the mean and std of the training split's depth inputs, fitted by `train` before
    # the run and written into its config (so embed and resumes use the same numbers).
    depth_norm: tuple_field(tuple[float, float] | Literal["auto"]) = Field(
        (0.0, 1.0), description="[mean, std] the depth input is normalised with, or auto (the training split's)"
    )
    default_fx: float = Field(
        518.857, gt=0, description="focal length (px) when a sample has no intrinsics (Kinect v1, SUN RGB-D)"
    )
    default_baseline_m: float = Field(0.075, gt=0, description="stereo baseline (m) when a sample has none")
    # "disjoint": each training session feeds exactly one modality pair (ImageBind's setting: pairs never
    # seen together in training); "joint": every sample trains every modality it carries
    pairing: Literal["joint", "disjoint"] = Field(
        "joint", description="joint: every sample trains every modality it has; disjoint: one pair per session"
    )
    cache_image_embeddings: bool = Field(False, description="embed the frozen image tower's inputs once, ahead")
    # negative control: pair every training sample with another sample's image (a fixed random
    # permutation); needs cached image embeddings. Retrieval must then fall to chance.
    shuffle_pairs: bool = Field(False, description="negative control: pair each sample with another's image")

    @field_validator("depth_norm")
    @classmethod
    def _std_positive(cls, norm):
        if norm != "auto" and not norm[1] > 0:
            raise ValueError(f"must be 'auto' or [mean, std] with std > 0, got {list(norm)}")
        return norm


class TrainConfig(StrictConfig):
    encoders: str = Field("tiny", description=f"encoder sizes: one of {', '.join(ENCODER_PRESETS)}")
    modalities: tuple_field(tuple[str, ...]) = Field(MODALITIES, description="the modalities trained")
    tower: TowerConfig = Field(default_factory=TowerConfig, description="the frozen OpenCLIP towers")
    optim: dict[str, OptimConfig] = Field(
        default_factory=lambda: dict(PAPER_OPTIM),
        description="AdamW settings per modality; modalities not given keep ImageBind's (PAPER_OPTIM)",
    )
    betas: tuple_field(tuple[float, float]) = Field((0.9, 0.95), description="AdamW betas")
    data: DataConfig = Field(default_factory=DataConfig, description="shard reading and model inputs")
    batch_size: int = Field(
        64, ge=2, description="samples per step per training worker (the loss sees batch_size x workers)"
    )
    epochs: int = Field(4, ge=1, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (over all epochs)")
    warmup_epochs: float = Field(2.0, ge=0, description="linear learning-rate warm-up (epochs)")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    checkpoint_at_epoch_end: bool = Field(True, description="also checkpoint at the end of every epoch")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept (the newest)")
    max_failures: int = Field(3, ge=0, description="worker failures Ray Train recovers from (FailureConfig)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="training precision: fp32 or bf16 autocast")
    seed: int = Field(0, description="seed of initialisation, shuffling and augmentation")

    @field_validator("optim", mode="before")
    @classmethod
    def _paper_defaults(cls, value):
        # a file names only the modalities it changes; the others keep the paper's recipe
        return {**PAPER_OPTIM, **value} if isinstance(value, dict) else value

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, value):
        unknown = set(value) - set(MODALITIES)
        if unknown or not value:
            raise ValueError(f"must be a non-empty subset of {list(MODALITIES)}, got {list(value)}")
        return value

    @field_validator("encoders")
    @classmethod
    def _known_preset(cls, value):
        if value not in ENCODER_PRESETS:
            raise ValueError(f"unknown encoder preset {value!r}; choose one of {sorted(ENCODER_PRESETS)}")
        return value

    @model_validator(mode="after")
    def _control_needs_cache(self):
        if self.data.shuffle_pairs and not self.data.cache_image_embeddings:
            raise ValueError("data.shuffle_pairs (the negative control) needs data.cache_image_embeddings")
        return self

    def encoder(self, modality: str) -> EncoderConfig:
        return ENCODER_PRESETS[self.encoders][modality]


def tiny_tower() -> TowerConfig:
    """A tiny random-init OpenCLIP config shipped with bindset, for tests and CPU demos."""
    return TowerConfig(model="bindset-tiny-clip", model_config_paths=(str(MODEL_CONFIG_DIR),))


PRESETS: dict[str, TrainConfig] = {
    # tests: tiny encoders, tiny random-init tower, cached image embeddings
    "tiny": TrainConfig(encoders="tiny", tower=tiny_tower(), batch_size=32, epochs=30, warmup_epochs=1.0,
                        checkpoint_every=50, optim={m: OptimConfig(lr=1e-3, weight_decay=0.05) for m in MODALITIES},
                        data=DataConfig(loader_workers=1, cache_image_embeddings=True, augment=False,
                                        depth_norm="auto")),
    # the emergent-alignment proof (tests/test_emergent_proof.py) and `make demo`: coarse tiny encoders trained
    # to convergence in ~2 min on 2 cores, ImageBind's setting of every training session feeding one pair only
    "proof": TrainConfig(encoders="coarse", tower=tiny_tower(), batch_size=128, epochs=10**6, max_steps=700,
                         warmup_epochs=10.0, checkpoint_every=10**6, checkpoint_at_epoch_end=False,
                         optim={m: OptimConfig(lr=2e-3, weight_decay=0.05) for m in MODALITIES},
                         data=DataConfig(loader_workers=0, cache_image_embeddings=True, augment=False,
                                         depth_norm="auto", pairing="disjoint")),
    # ImageBind's sizes against OpenCLIP ViT-H-14 (pass tower.checkpoint: a local open_clip checkpoint file)
    "imagebind": TrainConfig(encoders="imagebind", batch_size=512, epochs=16, precision="bf16",
                             data=DataConfig(loader_workers=8)),
}  # fmt: skip


# --------------------------------------------------------------------------------------- command-line flags

#: TrainConfig fields with a flag of their own (`bindset train`, `torchrun -m training.torchrun`); their type,
#: help and checks come from the field definitions above. Every other field: a --config file.
TRAIN_FLAGS = ("epochs", "max_steps", "batch_size", "checkpoint_every", "precision", "seed")


def add_train_config_arguments(parser) -> None:
    """--preset, --config and the TRAIN_FLAGS (plus --tower-checkpoint) on an argparse parser."""
    parser.add_argument("--preset", default="tiny", choices=tuple(PRESETS), help="named config (default: tiny)")
    parser.add_argument("--config", type=Path, help="JSON/YAML file of TrainConfig fields (instead of --preset)")
    g = parser.add_argument_group("training settings (TrainConfig; default: the preset's or the file's)")
    add_config_flags(g, TrainConfig, TRAIN_FLAGS, dest_prefix="cfg_", show_default=False)
    add_config_flags(g, TowerConfig, ("checkpoint",), dest_prefix="tower_", flag_prefix="tower-", show_default=False)


def train_config_from_args(args) -> TrainConfig:
    """The preset, or the ``--config`` file, with the flags given on top; a bad key or value raises
    ConfigError naming the file (or preset) and the key."""
    base = read_mapping(args.config) if args.config else PRESETS[args.preset].to_dict()
    values = merge(base, given_flags(args, TrainConfig, dest_prefix="cfg_"))
    tower = given_flags(args, TowerConfig, dest_prefix="tower_")
    if tower:
        values = merge(values, {"tower": tower})
    return TrainConfig.from_dict(values, source=str(args.config) if args.config else f"preset {args.preset}")
