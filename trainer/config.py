"""Typed training configuration: the sections pretraining and fine-tuning share (optimiser, run), and
pretraining's own; loaded from a preset (common/presets/) or YAML file plus KEY=VALUE overrides.

Choices are `Literal`s, which the loader (common.configfile) checks, naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from common.configfile import PRESETS, load_config, preset_names
from datagen.ctp.rng import seed_problem
from datagen.ctp.spec import GenerationConfig, validate_generation
from datagen.service.client.settings import RemoteSourceConfig
from datagen.service.server.settings import ReplicaConfig

PRESETS_DIR = PRESETS
EncoderName = Literal["r3d_18", "r2plus1d_18", "tiny"]  # trainer.model.encoders builds each
# auto: bf16 autocast on CUDA, else fp32. fp32: IEEE fp32 math everywhere (the paper's numerics; on CUDA cuDNN
# would otherwise run fp32 convolutions as TF32). tf32: fp32 tensors, TF32 tensor-core convolutions and matmuls.
Precision = Literal["auto", "fp32", "tf32", "bf16"]
Optimiser = Literal["sgd", "adamw"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    encoder: EncoderName = "r3d_18"
    head_hidden: int = 512


@dataclasses.dataclass(frozen=True)
class DataConfig:
    videos: tuple[str, ...] = ()  # video files, frame sources (zips, frame folders), folders or manifests
    seed: int = 0
    batch_size: int = 32  # clips per optimiser step, over all ranks (each rank trains batch_size / ranks)
    clips_per_video: int = 1  # an epoch visits every video this many times (with different keys)
    generation: GenerationConfig = GenerationConfig()


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its step schedule; these defaults are pretraining's (fine-tuning's:
    trainer.downstream.config.FinetuneOptimConfig)."""

    # sgd: the paper. adamw: short CPU runs; with the head's N(0, 0.001) init, SGD needs far more than a few
    # hundred steps to leave the predict-the-query-box plateau (docs/trainer.md).
    name: Optimiser = "sgd"
    lr: float = 0.01  # for `base_batch_size` clips; scaled linearly with data.batch_size
    base_batch_size: int = 32
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    epochs: int = 300
    milestones: tuple[int, ...] = (100, 200)  # epochs at which lr is multiplied by `gamma`
    gamma: float = 0.1
    grad_clip: float = 40.0  # max global gradient norm


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    clips: int = 64  # size of the fixed held-out set of generated clips
    every_steps: int = 1000  # tracking mIoU and the box image; also at the end of the run


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it executes: the settings pretraining and fine-tuning share."""

    out_dir: str = "runs/ctp"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each rank's cuda:LOCAL_RANK)
    # auto: bf16 autocast on CUDA (for speed), else fp32. The paper and the official code train in fp32:
    # set fp32 to reproduce them exactly (IEEE fp32, no TF32); tf32 trades that for tensor-core speed.
    precision: Precision = "auto"
    channels_last: bool | None = None  # None: on CUDA only
    # Under torchrun, BatchNorm normalises with the statistics of the global batch (on CPU and CUDA alike), so
    # a run trains the same network whatever its number of ranks (trainer.runtime.distributed.wrap_ranks).
    sync_batchnorm: bool = True
    log_every: int = 10  # steps
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class PretrainRunConfig(RunConfig):
    compile: bool = False  # torch.compile the network
    prefetch: int = 2  # batches generated ahead of the step (in-process data)
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at every epoch end and at a stop
    keep_checkpoints: int = 2
    stop_at_step: int | None = None  # checkpoint and exit at this step (resume later with --resume auto)
    log_indices: bool = False  # metrics.jsonl: each step's sample indices, per rank (an exactly-once audit)
    # In-process generation on CUDA refuses to start when its CtP renderer differs from the CPU kernels
    # (datagen/verify.py); false trains on whatever it renders.
    render_check: bool = True


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The datagen replicas that feed the ranks. With no address and no Redis, samples are generated in-process.

    Deployments set the environment instead ($CTP_REDIS_URL, $CTP_NAMESPACE, $CTP_DATAGEN_TOKEN)."""

    addresses: tuple[str, ...] = ()  # replica HOST:PORTs
    redis_url: str | None = None  # where replicas register; None: $CTP_REDIS_URL when set
    namespace: str | None = None  # the fleet's key prefix in Redis; None: $CTP_NAMESPACE when set, else ctp
    token_file: str | None = None  # the replicas' shared token; None: $CTP_DATAGEN_TOKEN when set
    tls_ca: str | None = None  # PEM: verify the replicas' certificates (TLS)
    tls_cert: str | None = None  # PEM: this trainer's certificate, for replicas that require one (with tls_key)
    tls_key: str | None = None
    server_name: str | None = None  # the name in the replicas' certificates, when it is not the dialled address
    shared_memory: bool = True  # clips from replicas on this host through shared memory (else inline gRPC)
    client: RemoteSourceConfig = RemoteSourceConfig()  # how requests are scheduled: window, stall_timeout, hedging…


class Recipe:
    """What a pretraining and a fine-tuning config share beyond their sections: the learning rate they train with."""

    optim: OptimConfig
    data: Any  # a section with the run's batch_size

    @property
    def lr(self) -> float:
        """The linearly scaled learning rate for this run's batch size."""
        return self.optim.lr * self.data.batch_size / self.optim.base_batch_size


@dataclasses.dataclass(frozen=True)
class TrainConfig(Recipe):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    run: PretrainRunConfig = PretrainRunConfig()
    service: ServiceConfig = ServiceConfig()
    replica: ReplicaConfig = ReplicaConfig()  # the replicas' own settings: `ctp-datagen serve --config` reads them


def presets() -> list[str]:
    return preset_names(PRESETS_DIR)


def load_train_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults ← preset or YAML file ← `a.b=c` overrides, validated."""
    cfg = load_config(TrainConfig, name_or_path or None, overrides)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
        (cfg.data.clips_per_video >= 1, f"data.clips_per_video must be >= 1, got {cfg.data.clips_per_video}"),
        (cfg.optim.epochs >= 1, f"optim.epochs must be >= 1, got {cfg.optim.epochs}"),
        (cfg.eval.clips >= 1, f"eval.clips must be >= 1, got {cfg.eval.clips}"),
        (not seed_problem(cfg.data.seed), seed_problem(cfg.data.seed, "data.seed") or ""),
    ]
    errors = [message for ok, message in checks if not ok]
    if errors:
        raise ValueError("invalid config: " + "; ".join(errors))
    validate_generation(cfg.data.generation, "data.generation.")
