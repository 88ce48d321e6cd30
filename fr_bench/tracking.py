"""MLflow tracking: the only module that imports mlflow.

Tracking never costs a result: if the store cannot be reached, the caller gets one warning and the
scores are still printed and written. The default store is an embedded SQLite database under the
workdir; ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

DEFAULT_EXPERIMENT = "frbench"

WarnFn = Callable[[str], None]


def default_tracking_uri(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(workdir: str | Path, uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

class RunLogger:
    """Logging calls for one active run; every call is a no-op once tracking has failed."""

    def __init__(self, tracker: "Tracker", run_id: str | None):
        self._tracker = tracker
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None and self._tracker.enabled

    def _call(self, what: str, fn: Callable[[], Any]) -> None:
        if not self.active:
            return
        try:
            fn()
        except Exception as err:  # tracking must never cost the results; this call alone is lost
            self._tracker._fail_call(f"could not log {what}", err)

    # Every call names this run's id explicitly, so a parent run can still be written to while one of
    # its children is the active run.
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, _param_value(v)) for k, v in _flatten(params).items()]
        self._call("params", lambda: self._tracker.client.log_batch(self.run_id, params=flat))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        clean = [Metric(_metric_key(k), float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        self._call("metrics", lambda: self._tracker.client.log_batch(self.run_id, metrics=clean))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        clean = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("tags", lambda: self._tracker.client.log_batch(self.run_id, tags=clean))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"artifact {path}", lambda: self._tracker.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, obj: Any, name: str) -> None:
        def _log() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / name
                p.write_text(json.dumps(obj, indent=2))
                self._tracker.client.log_artifact(self.run_id, str(p))

        self._call(f"artifact {name}", _log)

    def log_figure(self, fig: Any, name: str) -> None:
        self._call(f"figure {name}", lambda: self._tracker.client.log_figure(self.run_id, fig, name))


class Tracker:
    """Opens MLflow runs in an experiment; ``enabled=False`` makes every call a no-op."""

    def __init__(
        self,
        workdir: str | Path,
        uri: str | None = None,
        enabled: bool = True,
        experiment: str = DEFAULT_EXPERIMENT,
        warn: WarnFn | None = None,
    ):
        self.workdir = Path(workdir)
        self.uri = resolve_tracking_uri(workdir, uri)
        self.enabled = enabled
        self.experiment = experiment
        self._warn = warn or (lambda msg: None)
        self.mlflow: Any = None
        self.client: Any = None
        self._warned: set[str] = set()

    def _fail_call(self, what: str, err: BaseException) -> None:
        """One logging call failed: warn once per kind of call, keep logging the later ones."""
        if what not in self._warned:
            self._warned.add(what)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            self._warn(f"tracking: {what} at {self.uri} ({first}); later calls are still tried")

    def mark_killed(self, run_ids: list[str]) -> list[str]:
        """Runs a killed process left RUNNING are ended as KILLED; returns the ids that were."""
        if not self.enabled or not run_ids:
            return []
        killed = []
        try:
            if self.mlflow is None:
                self._connect()
            for rid in run_ids:
                if self.client.get_run(rid).info.status == "RUNNING":
                    self.client.set_terminated(rid, status="KILLED")
                    killed.append(rid)
        except Exception as err:
            self._fail_call("could not mark a killed run", err)
        return killed

    def _fail(self, what: str, err: BaseException) -> None:
        if self.enabled:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            self._warn(f"tracking disabled: {what} at {self.uri} ({first})")
        self.enabled = False

    def _connect(self) -> None:
        # Fail fast on an unreachable server instead of mlflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import logging

        import mlflow

        for name in ("mlflow", "alembic"):  # schema-migration chatter on first use of a store
            logging.getLogger(name).setLevel(logging.WARNING)
        self.mlflow = mlflow
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        # mlflow exports the URI to the environment; keep ours from leaking into later Trackers
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        if self.uri.startswith("sqlite:///"):
            self.workdir.mkdir(parents=True, exist_ok=True)
        client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        self.client = client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:") or self.uri.startswith("file:"):
                # keep artifacts beside the store, not in the caller's cwd
                location = (self.workdir.resolve() / "mlartifacts").as_uri()
            exp = client.get_experiment(client.create_experiment(self.experiment, artifact_location=location))
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            # MLflow 3's UI opens an untagged experiment on its GenAI overview; this opens the runs table
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        mlflow.set_experiment(self.experiment)

    @contextmanager
    def start_run(self, name: str, tags: dict[str, Any] | None = None, nested: bool = False) -> Iterator[RunLogger]:
        """Open a run (a child of the active one when ``nested``); yields a :class:`RunLogger`."""
        if not self.enabled:
            yield RunLogger(self, None)
            return
        run = None
        try:
            if self.mlflow is None:
                self._connect()
            run = self.mlflow.start_run(run_name=name, nested=nested, tags={k: str(v) for k, v in (tags or {}).items()})
        except Exception as err:
            self._fail("could not start a run", err)
        logger = RunLogger(self, run.info.run_id if run is not None else None)
        status = "FINISHED"
        try:
            yield logger
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if run is not None:
                try:
                    self.mlflow.end_run(status=status)
                except Exception as err:
                    self._fail("could not close the run", err)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _param_value(v: Any) -> str:
    s = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return s[:6000]


def _metric_key(k: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and space only
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in k)


# ------------------------------------------------------------------------------------------- queries
# Read-only access for the leaderboard (fr_bench.leaderboard stays mlflow-free).


def missing_store(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI when it does not exist yet (reading must not create it)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    return None if path.exists() else path


def search_runs(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> list[dict[str, Any]]:
    """Every active (not deleted) run of ``experiment`` at ``uri`` as plain dicts.

    Each dict: ``run_id``, ``name``, ``status``, ``start_time``/``end_time`` (ms since the epoch),
    ``params``, ``metrics`` (latest value per key), ``tags``. Raises ConfigError when the experiment
    does not exist (naming the ones that do) and InputError when the store cannot be read.
    """
    from .errors import ConfigError, InputError

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ConfigError(f"{uri}: no MLflow experiment '{experiment}' (experiments there: {', '.join(names) or 'none'})")
        runs: list[Any] = []
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    except ConfigError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(uri, f"cannot read the MLflow store ({first})") from None
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
            "artifact_uri": r.info.artifact_uri,
        }
        for r in runs
    ]
