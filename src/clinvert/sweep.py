"""Many configs x seeds as ordinary runs: local processes by default, Ray when asked.

Every run is a run directory ``OUT/runs/<row>/seed<k>/<objective>``; a run whose ``result.json``
exists is skipped and a run with a checkpoint is resumed, so an interrupted sweep continues where it
stopped. Workers are plain functions of a :class:`RunSpec`, so the same spec runs in a local process
pool or as a Ray task on a cluster.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from clinvert.callbacks import Callback
from clinvert.config import ConfigError, load_config, validate_config
from clinvert.runtime import available_cores

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a row's config file, a profile, a seed and an objective."""

    row: str
    config: str
    profile: str | None
    seed: int
    objective: str
    out_dir: str
    threads: int = 1
    #: further ``--set`` overrides shared by every run of a sweep (``data.path=...``)
    extra: tuple[str, ...] = ()

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` overrides that make this run from the row's config."""
        return [f"train.seed={self.seed}", f"train.objective={self.objective}", *self.extra]

    def resolve(self):
        """The validated run config of this spec."""
        return load_config(self.config, self.overrides, self.profile)


def run_dir(out: Path, row: str, seed: int, objective: str) -> Path:
    """Where one run of a sweep lives."""
    return out / "runs" / row / f"seed{seed}" / objective


def read_result(path: Path) -> dict[str, Any] | None:
    """The ``result.json`` of a run directory, or None if it has none (yet)."""
    file = path / "result.json"
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        return None


#: Model fields that only shape the contrastive loss: a supervised run (regression on z) never
#: reads them, so changing them does not make its result stale.
LOSS_ONLY_FIELDS = ("similarity", "p", "tau", "self_negative")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without what cannot change its run's result."""
    config.pop("claims", None)
    train, model = config.get("train"), config.get("model")
    if (
        isinstance(train, dict)
        and train.get("objective") == "supervised"
        and isinstance(model, dict)
    ):
        for field in LOSS_ONLY_FIELDS:
            model.pop(field, None)
    return config


def is_stale(out: Path, resolved_yaml: str) -> bool:
    """Whether the run in ``out`` was made from another config than ``resolved_yaml``.

    ``claims`` are left out: they say what a score should reach and never change a run. So are,
    for a supervised run, the fields of the contrastive loss (``LOSS_ONLY_FIELDS``).
    """
    file = out / "config.yaml"
    if not file.exists():
        return False
    try:
        old = yaml.safe_load(file.read_text())
    except yaml.YAMLError:
        return True
    new = yaml.safe_load(resolved_yaml)
    if not isinstance(old, dict):
        return True
    # the old file read with today's schema: a field added since, whose default is what runs did
    # before it existed (train.shards, train.precision, model.memory_format), changes nothing
    try:
        old = validate_config(old).to_dict()
    except ConfigError:
        return True
    return _comparable(old) != _comparable(new)


def current_result(spec: RunSpec) -> dict[str, Any] | None:
    """The result of ``spec``'s run if it finished from the spec's current config, else None.

    A run made from an older version of its row's config (other than ``claims``) does not count:
    a table never shows scores of a setting it no longer describes.
    """
    out = Path(spec.out_dir)
    if is_stale(out, spec.resolve().to_yaml()):
        return None
    return read_result(out)


class StepReporter(Callback):
    """Publishes a run's step in ``steps[key]`` (a dict, or a multiprocessing manager's dict shared
    with the sweep's process), at most every ``every`` seconds and at the last step."""

    def __init__(self, steps: Any, key: str, every: float = 1.0) -> None:
        self.steps, self.key, self.every = steps, key, every
        self._last = 0.0

    def on_step(self, trainer: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.every or trainer.step == trainer.cfg.train.steps:
            self.steps[self.key] = trainer.step
            self._last = now


def execute(spec: RunSpec, steps: Any = None) -> dict[str, Any]:
    """Run (or resume, or skip) one spec; returns its result. Safe to call in any process.

    ``steps``: a mapping the run publishes its step in (key: its ``out_dir``), for progress."""
    import torch

    from clinvert.rundir import resumable
    from clinvert.runtime import configure_process
    from clinvert.train import Trainer

    torch.set_num_threads(max(1, spec.threads))
    configure_process()
    out = Path(spec.out_dir)
    cfg = spec.resolve()
    if is_stale(out, cfg.to_yaml()):  # the row's config changed since this run: scores are stale
        print(f"clinvert: {out}: config changed since this run; running it again", flush=True)
        shutil.rmtree(out)
    done = read_result(out)
    if done is not None:
        return done
    callbacks = [StepReporter(steps, spec.out_dir)] if steps is not None else []
    return Trainer(cfg, out, progress=False, callbacks=callbacks).run(resume=resumable(out))


def expected_cost(spec: RunSpec) -> int:
    """A run's work in encoder passes over samples: steps x batch, twice for two contrastive views."""
    cfg = spec.resolve()
    views = 2 if cfg.train.objective == "contrastive" else 1
    return cfg.train.steps * cfg.train.batch_size * views


def _local(
    specs: list[RunSpec],
    workers: int,
    on_done: Callable[[RunSpec, dict], None],
    progress: _Progress | None = None,
) -> None:
    if workers <= 1:
        for spec in specs:
            on_done(spec, execute(spec, progress))  # the run updates the bar itself
        return
    # Longest runs first, so that a long row does not start last and run alone at the end.
    specs = sorted(specs, key=expected_cost, reverse=True)
    # spawn: forking a process that already runs torch's thread pools can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        shared = manager.dict()  # out_dir -> step, published by the workers every second
        pending = {pool.submit(execute, spec, shared): spec for spec in specs}
        while pending:
            finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            if progress is not None:
                progress.poll(shared)
            for future in finished:
                on_done(pending.pop(future), future.result())


def _ray(
    specs: list[RunSpec], address: str | None, on_done: Callable[[RunSpec, dict], None]
) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend: ray is not installed; pip install 'clinvert[ray]' (or use --backend local)"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True
        )
    try:
        task = ray.remote(execute)
        pending = {task.options(num_cpus=spec.threads).remote(spec): spec for spec in specs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                on_done(pending.pop(ref), ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()


def run_specs(
    specs: Iterable[RunSpec],
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    desc: str = "runs",
) -> dict[RunSpec, dict[str, Any]]:
    """Run every spec (skipping finished ones) and return their results."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    specs = list(specs)
    results: dict[RunSpec, dict[str, Any]] = {}
    todo = []
    for spec in specs:
        done = current_result(spec)
        if done is not None:
            results[spec] = done
        else:
            todo.append(spec)
    progress_bar = _Progress(specs, results, desc, disable=not progress)

    def on_done(spec: RunSpec, result: dict[str, Any]) -> None:
        results[spec] = result
        scores = result.get("final") or {}
        progress_bar.done(
            spec,
            f"{spec.row} seed{spec.seed} {spec.objective}: "
            + (f"r2={scores['r2']:.3f} mcc={scores['mcc']:.3f}" if scores else result["status"]),
        )

    try:
        if backend == "ray":
            _ray(todo, address, on_done)
        else:
            _local(todo, workers or 1, on_done, progress_bar)
    finally:
        progress_bar.close()
    return results


class _Progress:
    """A sweep's progress bar in training steps over all its runs (finished runs count whole),
    with the number of finished runs and the last result beside it."""

    def __init__(
        self, specs: list[RunSpec], results: dict[RunSpec, Any], desc: str, disable: bool
    ) -> None:
        self.total = {s.out_dir: s.resolve().train.steps for s in specs}
        self.seen = {s.out_dir: self.total[s.out_dir] for s in results}
        self.runs, self.finished = len(specs), len(results)
        self.bar = tqdm(
            total=sum(self.total.values()),
            initial=sum(self.seen.values()),
            disable=disable,
            unit="step",
            desc=desc,
            dynamic_ncols=True,
        )
        self._postfix = ""
        self._show()

    def __setitem__(self, key: str, step: int) -> None:
        """A run reports its step (in this process, or from :meth:`poll`)."""
        step = min(int(step), self.total.get(key, 0))
        self.bar.update(max(0, step - self.seen.get(key, 0)))
        self.seen[key] = max(step, self.seen.get(key, 0))

    def poll(self, shared: Any) -> None:
        """Take the steps the worker processes published."""
        for key, step in dict(shared).items():
            self[key] = step

    def done(self, spec: RunSpec, note: str) -> None:
        self[spec.out_dir] = self.total[spec.out_dir]
        self.finished += 1
        self._postfix = note
        self._show()

    def _show(self) -> None:
        runs = f"{self.finished}/{self.runs} runs"
        self.bar.set_postfix_str(f"{runs}; {self._postfix}" if self._postfix else runs)

    def close(self) -> None:
        self.bar.close()


def default_workers() -> int:
    """One single-threaded run per available core (see :func:`available_cores`)."""
    return available_cores()


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    """A JSON-ready view of a spec."""
    return asdict(spec)
