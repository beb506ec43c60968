"""The typed schema of the pretraining config: one dataclass per Hydra group, registered with ConfigStore.

Each ``conf/GROUP/*.yaml`` starts with ``defaults: [schema, _self_]``, so Hydra composes it onto the
dataclass: a value of the wrong type (``arch.hidden_size=abc``) or an unknown key (``train.lrr=1``)
is refused while composing, naming the key. The YAML files hold the default values; fields they set
are ``MISSING`` here, so there is one source. Each dataclass checks its values once, in
``__post_init__`` (the functions in ``checks.py``); ``OmegaConf.to_object`` of a composed config, or
``build`` of a plain dict, runs them all.

Keys that take ``auto`` or a number (``train.microbatch_size``, ``impl.threads``, ``impl.compile``)
are typed ``Any`` and checked in ``__post_init__``. Groups whose presets differ in keys (``eval``:
none vs glue) hold the union, the keys one preset lacks defaulting to None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import MISSING

from cramming.config import checks


@dataclass
class ArchConfig:
    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    intermediate_size: int = MISSING
    ffn: str = MISSING
    activation: str = MISSING
    norm_position: str = MISSING
    norm_eps: float = MISSING
    norm_bias: bool = MISSING
    linear_bias: bool = MISSING
    embedding_norm: bool = MISSING
    final_norm: bool = MISSING
    position_embedding: str = MISSING
    qk_norm: bool = False  # exports made before the switch existed lack it (distillation reads their arch)
    max_position_embeddings: int = MISSING
    type_vocab_size: int = MISSING
    prediction_head: bool = MISSING
    tie_embeddings: bool = MISSING
    sparse_prediction: bool = MISSING
    dropout: float = MISSING
    attention_dropout: float = MISSING
    init_std: float = MISSING

    def __post_init__(self) -> None:
        checks.check_arch(vars(self))


@dataclass
class TrainConfig:
    optimizer: str = MISSING
    muon: dict[str, Any] = MISSING  # checked by cramming.muon (its DEFAULTS name the keys)
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    schedule: str = MISSING
    warmup_fraction: float = MISSING
    decay_fraction: float = MISSING
    decay_shape: str = MISSING
    microbatch_size: Any = MISSING  # auto | a positive integer
    batch_size_start: int = MISSING
    batch_size: int = MISSING
    batch_ramp_fraction: float = MISSING
    start_clock_after_data: bool = MISSING
    log_every: int = MISSING
    log_every_seconds: float = MISSING
    validate_every_minutes: float = MISSING
    validation_batches: int = MISSING
    heldout: dict[str, Any] = MISSING  # checked by cramming.heldout
    checkpoint_minutes: float = MISSING
    keep_checkpoints: int = MISSING
    max_nonfinite_steps: int = MISSING
    on_nonfinite: str = MISSING
    checkpoint_every_steps: int = MISSING
    nonfinite_lr_factor: float = MISSING
    max_nonfinite_restores: int = MISSING
    stop_after_steps: int = MISSING
    debug_nan_steps: list[int] = MISSING
    debug_data_delay_s: float = MISSING

    def __post_init__(self) -> None:
        checks.check_train(vars(self))


@dataclass
class OpsConfig:
    """``impl.ops``: a per-op override of ``impl.kernels`` (null = follow it)."""

    layer_norm: str | None = None
    gelu: str | None = None
    attention: str | None = None


@dataclass
class ImplConfig:
    device: str = MISSING
    precision: str = MISSING
    compile: Any = MISSING  # auto | true | false
    compile_mode: str = MISSING
    kernels: str = MISSING
    ops: OpsConfig = field(default_factory=OpsConfig)
    threads: Any = MISSING  # null | a positive integer
    dataloader_workers: int = MISSING

    def __post_init__(self) -> None:
        checks.check_impl(asdict(self))


@dataclass
class TokenizerConfig:
    lowercase: bool = MISSING
    strip_accents: bool = MISSING
    ascii_only: bool = MISSING
    sample_mb: float = MISSING
    path: str | None = MISSING
    kind: str = MISSING


@dataclass
class FiltersConfig:
    max_tokens_per_char: float | None = MISSING
    min_doc_chars: int | None = MISSING
    dedup: bool = MISSING


@dataclass
class HubConfig:
    path: str | None = MISSING
    name: str | None = MISSING
    split: str = MISSING
    streaming: bool = MISSING
    max_documents: int | None = MISSING


@dataclass
class ReadymadeConfig:
    """A pre-tokenized corpus (data=pile-readymade)."""

    name: str = MISSING
    vocab_size: int = MISSING
    seq_len: int = MISSING
    column: str = MISSING
    tokenizer_file: str = MISSING
    special_tokens: dict[str, str] = MISSING


@dataclass
class DataConfig:
    source: str = MISSING
    files: Any = MISSING  # a path/glob or a list of them
    validation_files: Any = MISSING
    text_column: str = MISSING
    vocab_size: int = MISSING
    seq_len: int = MISSING
    cls_per_sequence: bool = MISSING
    packing: str = MISSING
    cache_dir: str = MISSING
    tokenizer: TokenizerConfig = MISSING
    filters: FiltersConfig = MISSING
    ordering: str = MISSING
    readymade: ReadymadeConfig | None = MISSING
    num_workers: int = MISSING
    batch_documents: int = MISSING
    shard_sequences: int = MISSING
    verify: str = MISSING
    mlm_probability: float = MISSING
    objective: str = MISSING
    masking: str = MISSING
    short_seq_prob: float = MISSING
    hub: HubConfig = MISSING
    validation_split_documents: int = MISSING

    def __post_init__(self) -> None:
        from cramming.config.data_checks import check_values

        check_values(asdict(self))


@dataclass
class EvalConfig:
    """``eval=none`` sets only ``name``; ``eval=glue`` the fine-tuning keys (conf/glue.yaml documents them)."""

    name: str = MISSING
    tasks: list[str] | None = None
    glue_dir: str | None = None
    seeds: int | None = None
    epochs: int | None = None
    lr: Any = None  # auto | a number
    batch_size: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    weight_decay: float | None = None
    betas: list[float] | None = None
    eps: float | None = None
    grad_clip: float | None = None
    dropout: float | None = None
    attention_dropout: float | None = None
    head: str | None = None


@dataclass
class WandbConfig:
    mode: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    tags: list[str] = MISSING

    def __post_init__(self) -> None:
        checks.check_wandb(vars(self))


@dataclass
class PretrainConfig:
    """The root of ``conf/pretrain.yaml``."""

    budget: Any = MISSING  # a duration (24h, 90m) or a deterministic budget (500steps); bare number = hours
    name: str = MISSING
    base_dir: str = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    prepare_only: bool = MISSING
    recipe: str | None = MISSING  # set by the recipe group (conf/recipe/*.yaml)
    arch: ArchConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    impl: ImplConfig = MISSING
    eval: EvalConfig = MISSING
    wandb: WandbConfig = MISSING

    def __post_init__(self) -> None:
        checks.check_run(asdict(self))


@dataclass
class StudentConfig:
    num_layers: int | None = MISSING  # null = half the teacher's
    hidden_size: int | None = MISSING  # null = the teacher's


@dataclass
class DistillConfig:
    """``distill.*`` of conf/distill.yaml: the loss and its recipe."""

    recipe: str = MISSING
    alpha_ce: float = MISSING
    alpha_mlm: float = MISSING
    alpha_cos: float = MISSING
    temperature: float = MISSING
    soft_targets: str = MISSING
    cosine_layers: str = MISSING

    def __post_init__(self) -> None:
        from cramming.config.checks import check_distill_config

        check_distill_config(vars(self))


@dataclass
class DistillRunConfig(PretrainConfig):
    """The root of ``conf/distill.yaml`` once ``arch`` is filled in from the teacher (no recipe group)."""

    recipe: str | None = None
    teacher: str = MISSING
    student: StudentConfig = MISSING
    distill: DistillConfig = MISSING


GROUPS = {"arch": ArchConfig, "data": DataConfig, "train": TrainConfig, "impl": ImplConfig,
          "eval": EvalConfig, "wandb": WandbConfig}  # fmt: skip


# The roots of the commands that fine-tune or predict (conf/glue.yaml, conf/finetune.yaml, conf/predict.yaml).
# They type the keys, so Hydra refuses ``epochs=abc`` or ``batch_sizee=3`` while composing, naming the key;
# the range checks of the fine-tuning keys are FinetuneSettings' (cramming.config.finetune), run once by the
# command (or by ``__post_init__`` when ``OmegaConf.to_object`` builds the dataclass), never repeated here.


def _check_finetune_keys(values: dict[str, Any]) -> None:
    from cramming.config.finetune import FinetuneSettings  # the one home of these checks (imports torch)

    FinetuneSettings.from_mapping(values)


@dataclass
class FinetuneProtocol:
    """The fine-tuning keys GLUE and ``cramming.finetune`` share (FinetuneSettings checks their values)."""

    epochs: float = MISSING  # fractions allowed (0.5)
    lr: Any = MISSING  # auto | a number
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    max_length: int = MISSING
    seed: int = MISSING
    warmup_fraction: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    grad_clip: float = MISSING
    dropout: float = MISSING
    attention_dropout: float = MISSING
    head: str = MISSING
    log_every: int = MISSING


@dataclass
class GlueCommandConfig(FinetuneProtocol):
    """The root of ``conf/glue.yaml`` (``python -m cramming.glue``); cramming.glue.run checks GLUE's keys."""

    model: str | None = MISSING
    tasks: Any = MISSING  # a list of task names, or one name (``tasks=sst2``): glue.tasks.check_task_names
    glue_dir: str | None = MISSING
    hub_cache_dir: str | None = MISSING
    seeds: int = MISSING
    max_train_examples: int | None = MISSING
    max_eval_examples: int | None = MISSING
    max_test_examples: int | None = MISSING
    submission: bool = MISSING
    out_dir: str | None = MISSING
    impl: ImplConfig = MISSING

    def __post_init__(self) -> None:
        _check_finetune_keys(vars(self))


@dataclass
class FinetuneCommandConfig(FinetuneProtocol):
    """The root of ``conf/finetune.yaml`` (``python -m cramming.finetune``); cramming.finetune.command checks
    the file and label keys."""

    model: str = MISSING
    train_file: str = MISSING
    validation_file: str | None = MISSING
    test_file: str | None = MISSING
    text_column: str = MISSING
    text_pair_column: str | None = MISSING
    label_column: str = MISSING
    out_dir: str | None = MISSING
    task_type: str = MISSING
    class_weights: Any = MISSING  # none | balanced | a list of weights in label order
    bad_rows: str = MISSING
    impl: ImplConfig = MISSING

    def __post_init__(self) -> None:
        _check_finetune_keys(vars(self))


@dataclass
class PredictCommandConfig:
    """The root of ``conf/predict.yaml`` (``python -m cramming.predict``); cramming.predict checks values."""

    model: str = MISSING
    input: str = MISSING
    output: str | None = MISSING
    format: str | None = MISSING
    text_column: str | None = MISSING
    text_pair_column: str | None = MISSING
    keep_columns: bool = MISSING
    bad_rows: str = MISSING
    batch_size: int = MISSING
    max_length: int | None = MISSING
    impl: ImplConfig = MISSING


@dataclass
class DistillCommandConfig(DistillRunConfig):
    """The root of ``conf/distill.yaml`` as composed: every group typed, ``arch`` loose because it is filled
    in after composing (the teacher's, cramming.distill.resolve_student) and checked then as DistillRunConfig
    (``validate_run``). No ``__post_init__`` checks: ``arch`` is not an ArchConfig yet."""

    arch: Any = None

    def __post_init__(self) -> None:
        pass
