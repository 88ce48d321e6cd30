"""The stage graph behind ``frbench run``: plan, skip what is finished, resume what is not.

Data flows one way — identities → generate → align → train → eval, and align → metrics. Each stage is
a pure function of (its config section, the hashes of its inputs); its output directory is named by
that hash and is finished once ``DONE.json`` exists. A config may enter the graph anywhere by naming
an existing dataset folder or model file under ``inputs``; the stages that would have produced them
are then not part of the run.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

from . import __version__
from .cache import DigestCache, RunLock, StageDir, path_digest, stable_hash
from .errors import ConfigError, InputError
from .io import write_json_atomic

#: stage params copied onto the parent run (what the leaderboard shows for a row)
PARENT_PARAMS = ("generator", "identities", "per_identity", "recipe", "identity_source")

ORDER = ("identities", "generate", "align", "train", "eval", "metrics")


@dataclass
class StageContext:
    """What a stage function gets: its config, where to write, and its inputs' output folders."""

    cfg: Any
    section: Any
    out_dir: Path
    inputs: dict[str, Path]
    workdir: Path
    progress: Any = None
    log: Any = None  # a tracking RunLogger for this stage's child run
    warn: Callable[[str], None] = lambda msg: None
    say: Callable[[str], None] = lambda msg: None
    #: how to run, never what to compute (not hashed): e.g. a generate shard, train's resume mode
    options: dict[str, Any] = field(default_factory=dict)
    #: a CLI verb writes its images straight into its output folder; ``frbench run`` into ``dataset/``
    flat: bool = False

    @property
    def dataset_dir(self) -> Path:
        """Where a generate/align stage writes its image folder."""
        return self.out_dir if self.flat else self.out_dir / "dataset"


@dataclass
class Stage:
    """A node of the graph. ``run`` returns a JSON-ready summary (metrics under ``"metrics"``)."""

    name: str
    deps: tuple[str, ...]
    run: Callable[[StageContext], dict[str, Any]]
    #: stages used when they are part of the run (e.g. metrics uses the trained model if there is one)
    optional: tuple[str, ...] = ()
    describe: Callable[[Any], str] = lambda cfg: ""
    #: the model files and folders the stage reads (weights, FR models, detector): their content is hashed
    reads: Callable[[Any], dict[str, Any]] = lambda cfg: {}


@dataclass
class PlannedStage:
    stage: Stage
    hash: str
    dir: StageDir
    status: str  # cached | resume | run | external
    detail: str = ""


@dataclass
class Plan:
    run_dir: Path
    stages: list[PlannedStage] = field(default_factory=list)
    external: dict[str, Path] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)  # the resolved runtime the hashes were made with
    #: a CLI verb: one stage, its output folder chosen by the user, one MLflow run (no parent)
    single: bool = False
    #: the run-directory lock; concurrent processes that may share the directory (generate shards,
    #: torchrun ranks) each hold their own and are kept apart by finer locks (the shard's)
    lock_suffix: str = ""
    #: full hash of every stage and digest of every given input, by name
    digests: dict[str, str] = field(default_factory=dict)
    #: content digests of the model files the stages read; saved when the plan is executed
    files: DigestCache = field(default_factory=DigestCache)

    def hashes(self) -> dict[str, str]:
        return {p.stage.name: p.hash[:12] for p in self.stages}


def provenance() -> dict[str, Any]:
    """frbench's version, the git commit of its checkout when there is one, and the versions of the
    packages that decide results."""
    import subprocess

    from .extras import dist_version

    commit = None
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
            commit = out.stdout.strip() or None
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit = f"{commit}+dirty" if commit and dirty else commit
        except (OSError, subprocess.SubprocessError):
            commit = None
    versions = {dist: dist_version(dist) for dist in ("torch", "torchvision", "numpy", "onnxruntime", "insightface",
                                                       "diffusers", "transformers", "lpips", "torch-fidelity",
                                                       "facenet-pytorch", "mlflow")}
    packages = {dist: v for dist, v in versions.items() if v is not None}
    return {"frbench": __version__, "git_commit": commit, "packages": packages}


#: the run dir file listing the MLflow runs of the invocation in progress (``<stem><lock suffix>.json``)
RUNS_LEDGER_STEM = ".mlflow-runs"
RUNS_LEDGER = f"{RUNS_LEDGER_STEM}.json"


def _section_dump(cfg: Any, name: str) -> Any:
    section = getattr(cfg, name, None)
    return section.model_dump(mode="json") if section is not None and hasattr(section, "model_dump") else section


#: bump a stage's entry when its code changes what it computes, so older stage dirs are not reused
PROTOCOL_VERSIONS = {"identities": 1, "generate": 1, "align": 2, "train": 2, "eval": 2, "metrics": 2}


def resolved_runtime(cfg: Any) -> dict[str, Any]:
    """The runtime settings that can change a stage's output, with ``auto`` resolved: the device type
    (not the index: cuda:0 and cuda:1 compute the same) and the dtype. Batch size and worker counts
    are left out — they change speed, not results."""
    rt = getattr(cfg, "runtime", None)
    if rt is None:
        return {}
    device = str(rt.device or "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"device_type": device.split(":")[0], "dtype": rt.dtype}


def stage_hash(cfg: Any, stage: Stage, input_hashes: dict[str, str], runtime: dict[str, Any], files: DigestCache) -> str:
    """What a stage computes: its resolved section, its inputs' digests, the content of the model files
    it reads, the seed, the resolved runtime, frbench's version and the stage's protocol version —
    nothing that only changes speed."""
    read = {k: files.of(v) for k, v in stage.reads(cfg).items() if v is not None}
    return stable_hash({"stage": stage.name, "config": _section_dump(cfg, stage.name), "inputs": input_hashes,
                        **({"reads": read} if read else {}), "seed": getattr(cfg, "seed", None), "runtime": runtime,
                        "frbench": __version__, "protocol": PROTOCOL_VERSIONS.get(stage.name, 1)})


def _input_digest(path: Path, files: DigestCache) -> str:
    """A given dataset folder by its listing (500k images are not read); a given model file by content."""
    return "external:" + (str(files.of(path)) if Path(path).is_file() else path_digest(path))


def verb_plan(cfg: Any, stage: Stage, out_dir: Path | None, inputs: dict[str, Path], *, workdir: Path,
              root: Path | None = None, lock_suffix: str = "") -> Plan:
    """The one-stage plan behind a CLI verb: its inputs are given paths, its output folder is ``out_dir``
    (or, for verbs whose result is a file, ``root/<stage>-<hash12>``).

    A verb always runs its stage (the stage resumes whatever its folder already holds: generated
    images, a training checkpoint); DONE.json there is rewritten when it finishes."""
    runtime = resolved_runtime(cfg)
    files = DigestCache(Path(workdir) / "cache" / "digests.json")
    digests = {k: _input_digest(v, files) for k, v in inputs.items()}
    h = stage_hash(cfg, stage, digests, runtime, files)
    if out_dir is None:
        if root is None:
            raise ValueError("verb_plan needs out_dir or root")
        out_dir = Path(root) / f"{stage.name}-{h[:12]}"
    sdir = StageDir(Path(out_dir))
    status = "resume" if sdir.path.is_dir() and any(sdir.path.iterdir()) else "run"
    return Plan(run_dir=Path(out_dir), stages=[PlannedStage(stage, h, sdir, status, stage.describe(cfg))],
                external=dict(inputs), runtime=runtime, single=True, lock_suffix=lock_suffix,
                digests={**digests, stage.name: h}, files=files)


def make_plan(cfg: Any, stages: dict[str, Stage], workdir: Path, run_name: str,
              start: str | None = None, until: str | None = None) -> Plan:
    """Resolve which stages take part, their hashes and whether each is finished."""
    for opt, value in (("--from", start), ("--until", until)):
        if value is not None and value not in stages:
            raise ConfigError(f"{opt}: unknown stage '{value}' (stages: {', '.join(ORDER)})")
    inputs = getattr(cfg, "inputs", None)
    external: dict[str, Path] = {}
    for key, provides in (("dataset", "align"), ("model", "train")):
        value = getattr(inputs, key, None) if inputs is not None else None
        if value is not None:
            p = Path(value)
            if not p.exists():
                raise InputError(p, f"inputs.{key} does not exist")
            external[provides] = p
    # A stage takes part if its section is in the config file (or something it feeds needs it),
    # unless its output was supplied under ``inputs``.
    given = getattr(cfg, "model_fields_set", set(ORDER))
    superseded: set[str] = set()

    def ancestors(name: str) -> None:
        for dep in stages[name].deps if name in stages else ():
            superseded.add(dep)
            ancestors(dep)

    for provided in external:
        superseded.add(provided)
        ancestors(provided)
    wanted = [n for n in ORDER if n in stages and n in given and n not in superseded]
    needed: list[str] = []

    def need(name: str) -> None:
        if name in needed or name in external:
            return
        for dep in stages[name].deps:
            if dep not in external:
                if dep not in stages or dep not in given:
                    hint = {"align": " (or inputs.dataset)", "train": " (or inputs.model)"}.get(dep, "")
                    raise ConfigError(f"stage '{name}' needs '{dep}': add a '{dep}:' section{hint} to the config")
                need(dep)
        needed.append(name)

    hi = ORDER.index(until) if until else len(ORDER) - 1
    for name in wanted:
        if ORDER.index(name) <= hi:
            need(name)
    for name in wanted:
        for soft in stages[name].optional:
            if soft in wanted and soft not in needed and soft not in external and ORDER.index(soft) <= hi:
                need(soft)
    needed = [n for n in ORDER if n in needed]
    lo = ORDER.index(start) if start else 0
    run_dir = workdir / "runs" / run_name
    runtime = resolved_runtime(cfg)
    plan = Plan(run_dir=run_dir, external=external, runtime=runtime,
                files=DigestCache(Path(workdir) / "cache" / "digests.json"))
    hashes: dict[str, str] = {k: _input_digest(v, plan.files) for k, v in external.items()}
    for name in needed:
        stage = stages[name]
        dep_hashes = {d: hashes[d] for d in (*stage.deps, *stage.optional) if d in hashes}
        h = stage_hash(cfg, stage, dep_hashes, runtime, plan.files)
        hashes[name] = h
        sdir = StageDir(run_dir / f"{name}-{h[:12]}")
        if sdir.is_done():
            status = "cached"
        elif start is not None and ORDER.index(name) < lo:
            raise InputError(sdir.path, f"--from {start} needs stage '{name}' finished first (no DONE.json)")
        else:
            status = "resume" if sdir.path.exists() and any(sdir.path.iterdir()) else "run"
        plan.stages.append(PlannedStage(stage, h, sdir, status, stage.describe(cfg)))
    plan.digests = hashes
    return plan


@contextmanager
def _tidy_on_failure(dirs: list[Path]) -> Iterator[None]:
    """Nothing half-written: on failure, folders this call created that hold only its lock and ledger go."""
    made = [d for d in dirs if not d.exists()]
    try:
        yield
    except BaseException:
        for d in reversed(made):
            if d.is_dir() and all(f.name.startswith((".lock", RUNS_LEDGER_STEM)) for f in d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        raise


def _rank0() -> bool:
    """Under torchrun only rank 0 records (DONE.json); every rank computes."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def execute(plan: Plan, cfg: Any, workdir: Path, *, tracker: Any = None, progress: Any = None,
            warn: Callable[[str], None] = lambda m: None, say: Callable[[str], None] = lambda m: None,
            on_stage: Callable[[PlannedStage, dict], None] | None = None, run_tags: dict[str, Any] | None = None,
            options: dict[str, Any] | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Run the plan under the run lock and record each stage (DONE.json with provenance, MLflow).

    ``frbench run``: one MLflow parent run, one child per stage. A CLI verb (``plan.single``): the one
    stage's run is the only one. A stage that returns ``"complete": False`` (a generate shard while
    others are pending) is not marked done, and the stages after it do not run."""
    results: dict[str, Any] = {}
    outputs: dict[str, Path] = dict(plan.external)
    hashes = plan.hashes()
    tags = dict(run_tags or {})
    if run_name is None:  # what the MLflow UI lists: which config, which generator, which computation
        run_name = f"{getattr(cfg, 'name', None) or plan.run_dir.name} · {tags.get('generator') or 'no generator'} · {stable_hash(hashes)[:8]}"
    prov = provenance()
    base_tags = {"frbench.version": __version__, "frbench.git_commit": prov["git_commit"] or "none"}
    with _tidy_on_failure([plan.run_dir, *(ps.dir.path for ps in plan.stages)]), \
            RunLock(plan.run_dir, suffix=plan.lock_suffix):
        plan.files.save()
        ledger = plan.run_dir / f"{RUNS_LEDGER_STEM}{plan.lock_suffix}.json"  # MLflow runs of the invocation in progress
        if tracker is not None and ledger.is_file():  # a process killed mid-run left them RUNNING
            try:
                tracker.mark_killed(json.loads(ledger.read_text()))
            except ValueError:
                pass
        open_runs: list[str] = []

        def opened(run: Any) -> None:
            if run is not None and getattr(run, "run_id", None):
                open_runs.append(run.run_id)
                write_json_atomic(ledger, open_runs)

        if plan.single or tracker is None:
            parent_cm: Any = nullcontext(None)
        else:
            parent_cm = tracker.start_run(run_name, tags={
                **base_tags, "frbench.stage": "run", "frbench.stage_hashes": ",".join(f"{k}:{v}" for k, v in hashes.items()),
                **{f"frbench.hash.{k}": v for k, v in hashes.items()}, **tags})
        parent_bare: set[str] = set()
        with parent_cm as parent:
            opened(parent)
            if parent is not None and getattr(parent, "active", False):
                parent.log_dict(cfg.model_dump(mode="json"), "config.json")
            for ps in plan.stages:
                name = ps.stage.name
                ins = {d: outputs[d] for d in (*ps.stage.deps, *ps.stage.optional) if d in outputs}
                stage_tags = {"frbench.stage": name, "frbench.hash": ps.hash[:12], "frbench.cached": ps.status == "cached"}
                if tracker is None:
                    child_cm: Any = nullcontext(None)
                elif plan.single:
                    child_cm = tracker.start_run(run_name, tags={**base_tags, **stage_tags, **tags})
                else:
                    child_cm = tracker.start_run(name, tags=stage_tags, nested=True)
                with child_cm as child:
                    opened(child)
                    if ps.status == "cached":
                        summary = ps.dir.read_done()["summary"]
                    else:
                        ps.dir.path.mkdir(parents=True, exist_ok=True)
                        ps.dir.done_file.unlink(missing_ok=True)  # a verb rewriting its folder: not finished until it is
                        ctx = StageContext(cfg=cfg, section=getattr(cfg, name, None), out_dir=ps.dir.path, inputs=ins,
                                           workdir=workdir, progress=progress, log=child, warn=warn, say=say,
                                           options=dict(options or {}), flat=plan.single)
                        t0 = time.perf_counter()
                        summary = ps.stage.run(ctx)
                        if summary.get("complete", True) and _rank0():
                            ps.dir.mark_done({"stage": name, "hash": ps.hash, "inputs": {k: str(v) for k, v in ins.items()},
                                              "input_hashes": {d: plan.digests.get(d) for d in ins},
                                              "config": _section_dump(cfg, name), "runtime": plan.runtime,
                                              "options": {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                                                          for k, v in (options or {}).items()},
                                              "output_digest": path_digest(ps.dir.path),
                                              "frbench_version": __version__, **prov,
                                              "seconds": round(time.perf_counter() - t0, 3), "summary": summary})
                    if child is not None and getattr(child, "active", False):
                        child.log_metrics({k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))})
                        child.log_params({k: v for k, v in summary.get("params", {}).items()})
                        if ps.status != "cached":
                            for art in summary.get("artifacts", []):
                                child.log_artifact(art)
                    if parent is not None and getattr(parent, "active", False):
                        parent.log_metrics({k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))})
                        # MLflow params are immutable: every stage's params go under "<stage>.", and the
                        # few the leaderboard reads bare are logged once, by the first stage that has them
                        params = summary.get("params", {})
                        bare = {k: v for k, v in params.items() if k in PARENT_PARAMS and k not in parent_bare}
                        parent_bare.update(bare)
                        parent.log_params({**{f"{name}.{k}": v for k, v in params.items()}, **bare})
                outputs[name] = ps.dir.path
                results[name] = summary
                if on_stage is not None:
                    on_stage(ps, summary)
                if not summary.get("complete", True):
                    break
        ledger.unlink(missing_ok=True)  # every run of this invocation ended
    return results
