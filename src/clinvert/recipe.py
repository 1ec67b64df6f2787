"""Recipes: runs trained one after another, each phase from the weights of the one before.

A config's ``recipes`` section names lists of phases; each phase is one of the config's profiles
plus optional overrides::

    recipes:
      best:
        - {profile: diagonal-mild}
        - {profile: wide, set: {train.steps: 8000, data.train_dir: data/s3/train64-200k}}
        - {profile: polish}

``clinvert train CONFIG --recipe best --out DIR`` trains every phase into its own run directory
``DIR/<i>-<name>`` (an ordinary run: ``clinvert threedident probe``, ``agree`` and ``--resume``
read it), phase ``i > 1`` with ``train.init_from`` set to phase ``i - 1``. A phase's config is the
config, its profile, its ``set``, then the command's ``--set`` (so ``--set train.seed=1`` or
``--set data.train_dir=...`` applies to every phase), then ``train.init_from``. Running the same
command again continues: a finished phase is kept, a phase with a checkpoint is resumed, the rest
are trained. A phase directory made from another config is refused (``--force`` trains every phase
again), and once a phase is trained anew every later one is too, since its start changed.
``DIR/recipe.json`` records the phases and their scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinvert.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    check_data_dirs,
    read_yaml,
    select_profile,
    validate_config,
)
from clinvert.io import write_json

#: The keys a phase may hold.
PHASE_KEYS = ("name", "profile", "set")
#: The file a recipe's output folder describes it in.
RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class Phase:
    """One phase of a recipe: a profile of the config and overrides, trained into ``out``."""

    name: str
    profile: str | None
    overrides: tuple[str, ...]
    out: Path
    cfg: RunConfig


def _phase_entries(data: dict[str, Any], recipe: str) -> list[dict[str, Any]]:
    """The phase mappings of ``recipes[recipe]``, checked for shape."""
    recipes = data.get("recipes")
    if not isinstance(recipes, dict):
        raise ConfigError("--recipe: this config defines no recipes (a 'recipes' section)")
    if recipe not in recipes:
        defined = ", ".join(sorted(recipes)) or "none"
        raise ConfigError(f"--recipe: unknown recipe {recipe!r}, defined in this config: {defined}")
    phases = recipes[recipe]
    if not isinstance(phases, list) or not phases:
        raise ConfigError(f"recipes.{recipe}: must be a non-empty list of phases")
    for i, phase in enumerate(phases):
        where = f"recipes.{recipe}[{i}]"
        if not isinstance(phase, dict):
            raise ConfigError(f"{where}: must be a mapping with keys {', '.join(PHASE_KEYS)}")
        unknown = [k for k in phase if k not in PHASE_KEYS]
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(PHASE_KEYS)}"
            )
        if not isinstance(phase.get("set", {}), dict):
            raise ConfigError(f"{where}.set: must be a mapping of key.path: value")
        name = phase.get("name")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ConfigError(f"{where}.name: must be a folder name without '/', got {name!r}")
    return phases


def _phase_name(i: int, phase: dict[str, Any]) -> str:
    """``<i>-<name>``, the phase's folder (``name`` defaults to its profile, else ``base``)."""
    return f"{i}-{phase.get('name') or phase.get('profile') or 'base'}"


def plan(
    config: str | Path,
    recipe: str,
    out: str | Path,
    overrides: list[str] | None = None,
    *,
    check_data: bool = True,
) -> list[Phase]:
    """Every phase of ``recipe`` with its validated config, before any work starts.

    Raises:
        ConfigError: the recipe or one of its phases is malformed or invalid, or (with
            ``check_data``) a phase's data folders are missing, named with the phase, so that no
            phase trains for nothing.
    """
    from clinvert.shipped import resolve_config_path

    data = read_yaml(resolve_config_path(str(config)))
    entries = _phase_entries(data, recipe)
    base = {k: v for k, v in data.items() if k != "recipes"}
    out = Path(out)
    phases: list[Phase] = []
    for i, entry in enumerate(entries, start=1):
        name = _phase_name(i, entry)  # unique: numbered
        own = tuple(f"{k}={json.dumps(v)}" for k, v in (entry.get("set") or {}).items())
        chain = (f"train.init_from={phases[-1].out}",) if phases else ()
        sets = [*own, *(overrides or []), *chain]
        try:
            cfg = validate_config(apply_overrides(select_profile(base, entry.get("profile")), sets))
            if check_data:
                check_data_dirs(cfg)
        except ConfigError as exc:
            raise ConfigError(f"recipe {recipe}, phase {name}: {exc}") from None
        phases.append(Phase(name, entry.get("profile"), own, out / name, cfg))
    return phases


def _check_fresh(phase: Phase) -> None:
    """Refuse a phase directory made from another config than the phase's."""
    from clinvert.sweep import is_stale

    if is_stale(phase.out, phase.cfg.to_yaml()):
        raise ConfigError(
            f"--out: {phase.out} holds a run made from another config than phase {phase.name}'s; "
            "use --force to train every phase again, or another --out"
        )


def _summary(phase: Phase, result: dict[str, Any] | None) -> dict[str, Any]:
    final = (result or {}).get("final") or {}
    return {
        "phase": phase.name,
        "profile": phase.profile,
        "run": str(phase.out),
        "init_from": phase.cfg.train.init_from,
        "status": (result or {}).get("status", "not started"),
        "steps": (result or {}).get("steps"),
        "wall_seconds": (result or {}).get("wall_seconds"),
        "r2": final.get("r2"),
        "mcc": final.get("mcc"),
        "r2_per_factor": final.get("r2_per_factor"),
    }


def read_recipe_record(out: str | Path) -> dict[str, Any]:
    """What ``out/recipe.json`` holds: the config, recipe, overrides and each phase's summary."""
    return json.loads((Path(out) / RECIPE_FILE).read_text())


def run_recipe(
    config: str | Path,
    recipe: str,
    out: str | Path,
    overrides: list[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train (or continue) every phase of ``recipe`` into ``out``; returns each phase's result.

    Stops at the first phase that does not finish (its result is the last one returned).
    ``out/recipe.json`` is rewritten after every phase with each phase's status and scores.
    """
    from clinvert import train
    from clinvert.rundir import resumable
    from clinvert.sweep import read_result

    phases = plan(config, recipe, out, overrides)
    if not force:
        for phase in phases:
            _check_fresh(phase)
    record = {
        "config": str(config),
        "recipe": recipe,
        "overrides": list(overrides or []),
        "phases": [_summary(p, None) for p in phases],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / RECIPE_FILE, record)
    results: list[dict[str, Any]] = []
    retrained = force  # once a phase trains anew, every later phase starts from new weights
    for i, phase in enumerate(phases):
        head = f"phase {i + 1}/{len(phases)} {phase.name} ({phase.out})"
        done = None if retrained else read_result(phase.out)
        if done is not None and done.get("status") == "finished":
            print(f"{head}: finished before, kept", flush=True)
            result = done
        elif done is not None:
            raise ConfigError(
                f"--out: phase {phase.name} {done.get('status')} before "
                f"({done.get('error', 'see its result.json')}); use --force to train every phase "
                "again"
            )
        else:
            # a phase stopped on its way (killed) reads "training" in recipe.json
            record["phases"][i]["status"] = "training"
            write_json(Path(out) / RECIPE_FILE, record)
            if not retrained and resumable(phase.out):
                print(f"{head}: resuming from its checkpoint", flush=True)
                result = train.resume(phase.out, progress=progress)
            else:
                print(f"{head}: training", flush=True)
                result = train.train(phase.cfg, phase.out, progress=progress, force=True)
            retrained = True
        results.append(result)
        record["phases"][i] = _summary(phase, result)
        write_json(Path(out) / RECIPE_FILE, record)
        if result.get("status") != "finished":
            break
    return results
