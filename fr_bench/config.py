"""Typed configuration: YAML in, validated pydantic object out.

Unknown or misspelt keys are errors that name the key and the closest valid one. Command-line
options override the file; the file overrides the defaults.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["fp32", "bf16", "fp16"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RuntimeConfig(Section):
    """Where and how models run."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: DType = "fp32"
    batch_size: int = Field(256, ge=1)
    workers: int = Field(8, ge=1)


class TrackingConfig(Section):
    enabled: bool = True
    uri: Optional[str] = None
    experiment: str = "frbench"


class InputsConfig(Section):
    """Enter the ``frbench run`` graph part-way: an existing aligned dataset and/or trained model."""

    dataset: Optional[Path] = None
    model: Optional[Path] = None


class EvalConfig(Section):
    """``frbench eval``: a model scored on benchmark files."""

    model: Optional[Path] = None
    data_dir: Optional[Path] = None
    benchmarks: Optional[list[str]] = None
    groups: dict[str, list[str]] = {}  # group benchmarks: {bupt: [African.bin, Asian.bin, …]} (paths relative to data_dir)
    flip: bool = True
    bootstrap: Optional[int] = Field(None, ge=10)  # replicates for 95% intervals of the fold means (null: off)
    bootstrap_seed: int = 0
    output: Optional[Path] = None


class IdentitiesConfig(Section):
    """``frbench identities``: identity contexts (unit 512-d vectors) for identity-conditioned generators."""

    source: Literal["uniform", "pca", "embed", "file"] = "uniform"
    n: Optional[int] = Field(None, ge=1)
    max_similarity: Optional[float] = Field(0.3, gt=-1.0, le=1.0)  # null: no filter
    seed: int = 0
    max_candidates: Optional[int] = Field(None, ge=1)
    reference_embeddings: Optional[Path] = None  # pca
    pca_components: Optional[int] = Field(None, ge=1)  # pca
    images: Optional[Path] = None  # embed
    fr_model: Optional[Path] = None  # embed
    file: Optional[Path] = None  # file
    negatives: Optional[Literal["far", "mid", "rand"]] = None
    pool_size: Optional[int] = Field(None, ge=2)
    out: Optional[Path] = None


class AlignConfig(Section):
    """``frbench align``: detector → 5 landmarks → norm_crop 112×112, with a failure policy."""

    input: Optional[Path] = None
    detector: str = "none"  # none | mtcnn | path to an insightface detection ONNX
    detector_kind: Literal["auto", "scrfd", "retinaface"] = "auto"
    det_size: int = Field(640, ge=32)
    det_thresh: float = Field(0.5, gt=0.0, lt=1.0)
    min_face_size: int = Field(20, ge=1)  # mtcnn: smallest face searched, pixels (facenet-pytorch default 20)
    template: Literal["arcface-112", "negfacediff-96x112"] = "arcface-112"
    pick: Literal["largest", "center", "score"] = "largest"
    on_failure: Literal["skip", "resize", "resize-identity", "drop-identity"] = "skip"
    out: Optional[Path] = None


from pydantic import model_validator  # noqa: E402  (used by the train recipe models below)


class TrainModelConfig(Section):
    """Backbone: arcface_torch iresnet ``r18|r34|r50|r100|r200`` or IR-SE ``irse18|irse34|irse50|irse100``."""

    arch: str = "r50"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    embedding_size: int = Field(512, ge=2)


_HEAD_KEYS = {"arcface": ("s", "m", "straight_through", "th_mm", "easy_margin"), "cosface": ("s", "m"), "adaface": ("s", "m", "h", "t_alpha"), "combined": ("s", "m1", "m2", "m3")}


class TrainHeadConfig(Section):
    """Margin head; only the keys of the chosen ``type`` may be set (see ``fr_bench.models.heads``)."""

    type: Literal["arcface", "cosface", "adaface", "combined"] = "cosface"
    s: float = Field(64.0, gt=0)
    m: Optional[float] = None
    h: Optional[float] = None
    t_alpha: Optional[float] = Field(None, gt=0.0, le=1.0)
    m1: Optional[float] = None
    m2: Optional[float] = None
    m3: Optional[float] = None
    straight_through: Optional[bool] = None
    th_mm: Optional[bool] = None  # arcface: TFace's fallback t − sin(π−m)·m where θ + m > π
    easy_margin: Optional[bool] = None  # arcface: margin only where cos θ > 0

    @model_validator(mode="after")
    def _keys_fit_type(self) -> "TrainHeadConfig":
        allowed = _HEAD_KEYS[self.type]
        extra = [k for k in ("m", "h", "t_alpha", "m1", "m2", "m3", "straight_through", "th_mm", "easy_margin")
                 if getattr(self, k) is not None and k not in allowed]
        if extra:
            raise ValueError(f"'{extra[0]}' does not apply to a {self.type} head (it takes {', '.join(allowed)})")
        if self.th_mm and self.easy_margin:
            raise ValueError("set one ArcFace fallback: th_mm or easy_margin, not both")
        return self

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _HEAD_KEYS[self.type] if getattr(self, k) is not None}


class TrainOptimizerConfig(Section):
    """``lr`` is the rate at a total batch of ``lr_batch_size``; other batch sizes scale it linearly."""

    type: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    lr_batch_size: int = Field(512, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_bn: bool = False  # AdaFace: no weight decay on BatchNorm parameters
    grad_clip: Optional[float] = Field(5.0, gt=0)  # max-norm on the backbone gradients; null = off
    clip_head: bool = False  # also clip the margin head's gradients, separately, to the same max-norm (IDiff-Face)


class TrainScheduleConfig(Section):
    """Fixed LR schedule, stepped every iteration. ``step``: × gamma once ``m`` epochs are complete, for
    each m in ``milestones`` (PyTorch MultiStepLR convention); ``poly``: (1 − t/T)^power to 0.
    Both start with ``warmup_epochs`` of linear warm-up from 0."""

    type: Literal["step", "poly"] = "step"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)
    power: float = Field(1.0, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)


class TrainRandAugmentConfig(Section):
    num_ops: int = Field(4, ge=1, le=16)
    magnitude: int = Field(16, ge=1, le=30)


class TrainAugmentConfig(Section):
    """Flip, IDiff-Face RandAugment and AdaFace-style crop / low-res / photometric (``fr_bench.augment``)."""

    flip: bool = True
    randaugment: Optional[TrainRandAugmentConfig] = None
    crop_prob: float = Field(0.0, ge=0, le=1)
    lowres_prob: float = Field(0.0, ge=0, le=1)
    photometric_prob: float = Field(0.0, ge=0, le=1)


class TrainRecipe(Section):
    """A training recipe (``configs/train/<name>.yaml``): everything that changes the trained weights."""

    name: str = "custom"
    source: str = ""
    notes: str = ""
    model: TrainModelConfig = TrainModelConfig()
    head: TrainHeadConfig = TrainHeadConfig()
    optimizer: TrainOptimizerConfig = TrainOptimizerConfig()
    schedule: TrainScheduleConfig = TrainScheduleConfig()
    augment: TrainAugmentConfig = TrainAugmentConfig()
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(512, ge=1)


class TrainMonitorConfig(Section):
    """Optional per-epoch monitoring on ``.bin`` sets: logged, never used to pick a schedule or checkpoint."""

    data_dir: Optional[Path] = None
    benchmarks: Optional[list[str]] = None  # default: the five present in data_dir
    every_epochs: int = Field(1, ge=1)


class TrainConfig(Section):
    """``frbench train``: a recipe preset (name or YAML path) plus run settings."""

    recipe: str = "idiff-face"
    overrides: dict[str, Any] = {}  # partial recipe merged over the preset, e.g. {head: {m: 0.4}}
    dataset: Optional[Path] = None
    output: Optional[Path] = None
    cache_dir: Optional[Path] = None
    device: Optional[str] = None  # default: runtime.device
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = True
    deterministic: bool = False
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    prefetch: int = Field(4, ge=1)
    strict_images: bool = False
    identities: Optional[int] = Field(None, ge=2)  # the first N identities (sorted names); null: all
    per_identity: Optional[int] = Field(None, ge=1)  # the first K images of each (sorted names); null: all
    monitor: TrainMonitorConfig = TrainMonitorConfig()


class GenerateConfig(Section):
    """``frbench generate``: identity contexts → images with a registered generator adapter."""

    generator: Optional[str] = None  # idiff-face | negfacediff | adaptdiff | … (frbench generate --help)
    weights: Optional[Path] = None
    identities: Optional[Path] = None  # folder with identities.npy (+ .json), or a contexts file
    negatives: Optional[Path] = None  # .npy of row indices or vectors; default: identities.json negatives
    num_identities: Optional[int] = Field(None, ge=1)  # the first N contexts (default: all)
    per_identity: int = Field(50, ge=1)
    seed: int = 42
    batch_size: Optional[int] = Field(None, ge=1)  # default 64
    dtype: Optional[DType] = None  # default: runtime.dtype
    steps: Optional[int] = Field(None, ge=1)  # sampler steps (default: the generator's own, DDPM 1000)
    out: Optional[Path] = None
    writers: int = Field(4, ge=1)  # PNG-writing threads
    options: dict[str, Any] = {}  # generator-specific, validated by the adapter (see its preset in configs/)


FeatureExtractor = Literal["inception-v3-compat", "vgg16"]


class MetricsConfig(Section):
    """``frbench metrics``: separability, identity consistency and diversity of an image-folder dataset."""

    dataset: Optional[Path] = None
    fr_model: Optional[Path] = None
    # the published name of that model (e.g. "ElasticFace-Cos R100"): the leaderboard ranks separability
    # beside published rows measured with the same-named model; null: file name + sha256 prefix
    fr_model_name: Optional[str] = None
    # identity consistency compares images with their contexts, so it needs the encoder the contexts came
    # from (IDiff-Face family: ElasticFace-Arc R100; Arc2Face: antelopev2's arcface.onnx); null: fr_model
    consistency_fr_model: Optional[Path] = None
    reference: Optional[Path] = None  # real image folder for P/R and FID
    identities: Optional[int] = Field(1000, ge=1)  # first N identity folders with >= 2 images (null: all)
    per_identity: Optional[int] = Field(20, ge=2)  # first K images of each (null: all)
    lpips_identities: int = Field(100, ge=1)
    max_impostors: Optional[int] = Field(None, ge=1)  # sample impostor pairs beyond this many (null: exact)
    seed: int = 0
    contexts: Optional[Path] = None  # identity contexts .npy (default: from generate.json / the dataset folder)
    prc_k: int = Field(10, ge=1)
    prc_extractor: FeatureExtractor = "inception-v3-compat"
    fid_extractor: FeatureExtractor = "inception-v3-compat"
    prc_layer: Optional[str] = None  # default: torch-fidelity's ('2048' for inception, 'fc2_relu' for vgg16)
    fid_layer: Optional[str] = None
    # identity leakage audit (runs when a training set is given)
    training_images: Optional[Path] = None  # the generator's training set: identity folders of images
    training_embeddings: Optional[Path] = None  # or: N×D float .npy of its embeddings (same FR model) …
    training_labels: Optional[Path] = None  # … and their N identity labels (.npy, no pickle)
    leakage_fmr: float = Field(1e-4, gt=0.0, lt=1.0)  # calibration: share of training impostor pairs above the threshold
    leakage_threshold: Optional[float] = Field(None, ge=-1.0, le=1.0)  # a fixed cosine instead of the calibration
    leakage_images: bool = False  # also every synthetic image's nearest training image
    leakage_top_k: int = Field(16, ge=1)  # closest pairs listed and shown in the grid
    # confidence intervals by resampling identities
    bootstrap: Optional[int] = Field(None, ge=10)  # replicates (null: off)
    bootstrap_max_impostors: int = Field(5_000_000, ge=1000)  # impostor pairs the bootstrap uses (a uniform sample beyond)
    inception_weights: Optional[Path] = None  # default: torch hub cache weights-inception-2015-12-05-6726825d.pth
    vgg16_weights: Optional[Path] = None  # default: torch hub cache vgg16-397923af.pth
    block_mib: Optional[int] = Field(None, ge=1)  # working memory per block of the all-pairs product (default 256 CPU, 2048 CUDA)
    # the metrics to compute; empty: every one whose inputs are there (a named one without them is an error)
    compute: list[Literal["separability", "consistency", "lpips", "prc", "fid", "leakage"]] = []
    output: Optional[Path] = None


# <<section-models>> (later stages add their section classes above this line)


class Config(Section):
    """A whole frbench config file."""

    name: Optional[str] = None
    paths: dict[str, str] = {}  # the local paths a paper config leaves to the user; used as ${paths.NAME}
    workdir: Path = Path("frbench-work")
    seed: int = 0
    demo: bool = False  # fill missing weights/benchmarks with tiny random artefacts (configs/demo.yaml)
    real: bool = False  # a real-data baseline (e.g. CASIA-WebFace): the leaderboard's gap to real refers to it
    inputs: InputsConfig = InputsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    identities: IdentitiesConfig = IdentitiesConfig()
    align: AlignConfig = AlignConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    metrics: MetricsConfig = MetricsConfig()
    # <<section-fields>>


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc[:-1]``."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        args = getattr(current, "__args__", ())
        for a in args:  # Optional[Section]
            if isinstance(a, type) and issubclass(a, BaseModel):
                current = a
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line for the first problem, with a did-you-mean for unknown keys."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        valid = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (valid keys: {', '.join(valid)})" if valid else "")
        return f"{source}: unknown key '{key}'{hint}"
    return f"{source}: '{key}': {first['msg']}"


def validate(data: dict[str, Any], model: type[BaseModel] = Config, source: str = "config") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None


def load_config(path: str | Path | None, model: type[BaseModel] = Config, overrides: Optional[dict[str, Any]] = None) -> Any:
    """Read ``path`` (or defaults when None) into ``model``, with ``overrides`` (nested, as ``--set``
    gives them) merged over the file; errors name the file and key."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = shipped_config(Path(path))
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data, source = read_yaml_mapping(path, "the top level must be a mapping of sections"), str(path)
    if overrides:
        from .recipes import merge  # recipes imports this module: imported here, not at the top

        data, source = merge(data, overrides), f"{source} with --set"
    data = resolve_paths(data, source)
    return validate(data, model, source) if (path is not None or overrides) else model()


def resolve_paths(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Replace ``${paths.NAME}`` in every string value by the config's ``paths.NAME``."""
    paths = data.get("paths") or {}
    if not isinstance(paths, dict):
        raise ConfigError(f"{source}: 'paths' must be a mapping of names to local paths")

    def sub(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, where) for v in value]
        if isinstance(value, str) and "${" in value:
            def one(m: "re.Match[str]") -> str:
                name = m.group(1)
                if name not in paths:
                    close = difflib.get_close_matches(name, list(paths), n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else f" (paths: {', '.join(paths) or 'none'})"
                    raise ConfigError(f"{source}: {where} refers to ${{paths.{name}}}, which the 'paths' block does not define{hint}")
                return str(paths[name])
            return re.sub(r"\$\{paths\.([A-Za-z0-9_\-]+)\}", one, value)
        return value

    return {k: (v if k == "paths" else sub(v, k)) for k, v in data.items()}


def config_root() -> Path:
    """The paper configs shipped with frbench (``configs/`` installed as ``fr_bench/configs``)."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def shipped_config(path: Path) -> Path:
    """``path`` if it exists; else the shipped config it names (``configs/demo.yaml``, ``demo.yaml`` or
    ``demo``), so ``frbench run configs/demo.yaml`` works from any folder after ``pip install``."""
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    candidate = config_root().joinpath(*parts) if parts else config_root()
    if candidate.suffix not in (".yaml", ".yml"):
        candidate = candidate.with_name(candidate.name + ".yaml")
    return candidate if candidate.is_file() else path


def read_yaml_mapping(path: Path, not_mapping: str = "the top level must be a mapping") -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; errors name the file (and line)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {not_mapping}")
    return data
