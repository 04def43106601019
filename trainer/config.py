"""Typed pretraining configuration: YAML presets (trainer/configs/) plus `a.b=c` command-line overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datagen.config import GenerationConfig, load_config, preset_names, resolve_preset, validate_generation

PRESETS_DIR = Path(__file__).resolve().parent / "configs"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    encoder: str = "r3d_18"  # r3d_18 | r2plus1d_18 | tiny
    head_hidden: int = 512


@dataclasses.dataclass(frozen=True)
class DataConfig:
    videos: tuple[str, ...] = ()  # video files, folders or manifests
    seed: int = 0
    batch_size: int = 32  # clips per optimiser step, over all ranks (each rank trains batch_size / ranks)
    clips_per_video: int = 1  # an epoch visits every video this many times (with different keys)
    generation: GenerationConfig = GenerationConfig()


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    # sgd: the paper. adamw: short CPU runs; with the head's N(0, 0.001) init, SGD needs far more than a few
    # hundred steps to leave the predict-the-query-box plateau (docs/trainer.md).
    name: str = "sgd"
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
    out_dir: str = "runs/ctp"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, else fp32) | fp32 | bf16
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool = False  # torch.compile the network
    prefetch: int = 2  # batches generated ahead of the step (in-process data)
    log_every: int = 10
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at every epoch end and at a stop
    keep_checkpoints: int = 2
    stop_at_step: int | None = None  # checkpoint and exit at this step (resume later with --resume auto)
    progress: bool = True
    log_indices: bool = False  # metrics.jsonl: each step's sample indices, per rank (an exactly-once audit)


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    service: ServiceConfig = ServiceConfig()

    @property
    def lr(self) -> float:
        """The linearly scaled learning rate for this run's batch size."""
        return self.optim.lr * self.data.batch_size / self.optim.base_batch_size


def presets() -> list[str]:
    return preset_names(PRESETS_DIR)


def load_train_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults ← preset or YAML file ← `a.b=c` overrides, validated."""
    path = resolve_preset(name_or_path, PRESETS_DIR) if name_or_path else None
    cfg = load_config(TrainConfig, path, overrides)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
        (cfg.data.clips_per_video >= 1, f"data.clips_per_video must be >= 1, got {cfg.data.clips_per_video}"),
        (cfg.optim.epochs >= 1, f"optim.epochs must be >= 1, got {cfg.optim.epochs}"),
        (cfg.optim.name in ("sgd", "adamw"), f"optim.name must be sgd or adamw, got {cfg.optim.name!r}"),
        (
            cfg.run.precision in ("auto", "fp32", "bf16"),
            f"run.precision must be auto, fp32 or bf16, got {cfg.run.precision!r}",
        ),
        (cfg.eval.clips >= 1, f"eval.clips must be >= 1, got {cfg.eval.clips}"),
    ]
    errors = [message for ok, message in checks if not ok]
    if errors:
        raise ValueError("invalid config: " + "; ".join(errors))
    validate_generation(cfg.data.generation, "data.generation.")
