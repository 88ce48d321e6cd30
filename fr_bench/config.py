"""Typed configuration: YAML in, validated pydantic object out.

Unknown or misspelt keys are errors that name the key and the closest valid one. Command-line
options override the file; the file overrides the defaults.
"""

from __future__ import annotations

import difflib
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


class EvalConfig(Section):
    """``frbench eval``: a model scored on benchmark files."""

    model: Optional[Path] = None
    data_dir: Optional[Path] = None
    benchmarks: Optional[list[str]] = None
    flip: bool = True
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
    detector: str = "none"  # none | path to an insightface detection ONNX
    detector_kind: Literal["auto", "scrfd", "retinaface"] = "auto"
    det_size: int = Field(640, ge=32)
    det_thresh: float = Field(0.5, gt=0.0, lt=1.0)
    pick: Literal["largest", "center", "score"] = "largest"
    on_failure: Literal["skip", "resize", "drop-identity"] = "skip"
    out: Optional[Path] = None


# <<section-models>> (later stages add their section classes above this line)


class Config(Section):
    """A whole frbench config file."""

    name: Optional[str] = None
    workdir: Path = Path("frbench-work")
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    identities: IdentitiesConfig = IdentitiesConfig()
    align: AlignConfig = AlignConfig()
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


def load_config(path: str | Path | None, model: type[BaseModel] = Config) -> Any:
    """Read ``path`` (or defaults when None) into ``model``; errors name the file and key."""
    if path is None:
        return model()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return validate(data, model, str(path))
