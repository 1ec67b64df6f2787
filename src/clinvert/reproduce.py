"""Reproduce the paper's synthetic tables: one config per row, rows x seeds x {contrastive,
supervised} as ordinary runs, aggregated into ``OUT/<table>.json`` and ``OUT/<table>.md``.

Table 1 scores affine identifiability (R^2), Table 2 permutation identifiability (MCC). Every row's
config lives in ``configs/synthetic/<table>/<row>.yaml`` with the paper-scale settings and a
``quick`` profile sized for a 2-core machine.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from clinvert.config import ConfigError, describe_model, describe_process, load_config
from clinvert.io import write_json, write_text
from clinvert.sweep import (
    RunSpec,
    available_cores,
    current_result,
    default_workers,
    run_dir,
    run_specs,
)

#: Metric each table reports.
TABLES: dict[str, str] = {"table1": "r2", "table2": "mcc", "kitti": "mcc"}
#: Tables whose rows read a data file (``--data`` points every row at one).
DATA_TABLES = ("kitti",)
OBJECTIVES = ("contrastive", "supervised")


def configs_root() -> Path:
    """The shipped ``configs/synthetic`` (package data; the repository's ``configs/`` links to it),
    so that tables reproduce from any directory; ``--configs`` points elsewhere."""
    from clinvert.shipped import config_root

    return config_root() / "synthetic"


def table_folder(table: str, root: Path | None = None) -> Path:
    """Where a table's row configs live: ``ROOT/TABLE`` (default root ``configs/synthetic``; the
    KITTI table's rows sit in ``configs/kitti``, beside it)."""
    if root is not None:
        return root / table
    if table in DATA_TABLES:
        return configs_root().parent / table
    return configs_root() / table


def table_rows(table: str, root: Path | None = None) -> dict[str, Path]:
    """Row name -> config file of a table, in file-name order."""
    if table not in TABLES:
        raise ConfigError(f"table: must be one of {', '.join(TABLES)}, got {table!r}")
    folder = table_folder(table, root)
    rows = {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    if not rows:
        raise ConfigError(f"table: no row configs found in {folder}")
    return rows


def select_rows(rows: dict[str, Path], names: list[str] | None) -> dict[str, Path]:
    """The rows named in ``names`` (all when None), with a clear error for unknown names."""
    if not names:
        return rows
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ConfigError(f"--rows: unknown row {unknown[0]!r}; rows are: {', '.join(rows)}")
    return {n: rows[n] for n in names}


def build_specs(
    table: str,
    out: Path,
    *,
    quick: bool,
    seeds: int,
    rows: list[str] | None = None,
    threads: int = 1,
    root: Path | None = None,
    data: str | None = None,
    ceiling_seeds: int | None = None,
    profile: str | None = None,
) -> list[RunSpec]:
    """Every run of a table: rows x seeds x (the row's objective, supervised), validated before any
    work starts. ``data`` points every row's ``data.path`` at one file (tables of real data);
    ``ceiling_seeds`` limits the supervised ceiling to the first N seeds (default: every seed; 0:
    none); ``profile`` names the profile to use (default: ``quick`` with ``quick``, else none)."""
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    if ceiling_seeds is not None and not 0 <= ceiling_seeds <= seeds:
        raise ConfigError(f"--ceiling-seeds: must be in 0..--seeds ({seeds}), got {ceiling_seeds}")
    ceiling_seeds = seeds if ceiling_seeds is None else ceiling_seeds
    if data is not None and table not in DATA_TABLES:
        raise ConfigError(f"--data: only for the tables {', '.join(DATA_TABLES)}, got {table}")
    if data is not None and not Path(data).is_file():
        raise ConfigError(f"--data: file not found, got {data!r}")
    extra = (f"data.path={Path(data).resolve()}",) if data is not None else ()
    wanted = profile or ("quick" if quick else None)
    specs = []
    for row, path in select_rows(table_rows(table, root), rows).items():
        # a row without the profile asked for runs its quick profile (a headline of user rows)
        profile = wanted if wanted in _profiles(path) or not quick else "quick"
        # the row's own method (InfoNCE, or SlowVAE for a slowvae row) and the supervised ceiling
        own = own_method(load_config(str(path), list(extra), profile))
        for seed in range(seeds):
            for objective in (own, "supervised") if seed < ceiling_seeds else (own,):
                spec = RunSpec(
                    row,
                    str(path),
                    profile,
                    seed,
                    objective,
                    str(run_dir(out, row, seed, objective)),
                    threads,
                    extra,
                )
                spec.resolve()  # fail now, with the field named, not hours into the sweep
                specs.append(spec)
    return specs


def own_method(cfg: Any) -> str:
    """A row's own objective: its ``train.objective`` (InfoNCE, or SlowVAE on a slowvae row), and
    InfoNCE for a row whose config says ``supervised`` (the ceiling runs beside it anyway)."""
    return "contrastive" if cfg.train.objective == "supervised" else cfg.train.objective


def _profiles(path: Path) -> set[str]:
    """Names of the profiles a row's config defines."""
    from clinvert.config import read_yaml

    return set((read_yaml(path).get("profiles") or {}).keys())


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


#: Random linear codes per data file behind a data table's chance column.
CHANCE_TRIALS = 100


def random_code_level(cfg: Any, cache: dict | None = None) -> dict[str, float] | None:
    """MCC and alignment of random linear codes of a row's test latents, as wide as its encoder's
    output (:func:`clinvert.metrics.chance_level`): the chance level of its MCC. None when the
    row's data cannot be read here (a table collected without its data file)."""
    import torch

    from clinvert import metrics
    from clinvert.data.sources import make_source

    width = cfg.model.output_dim or cfg.latent.dim
    key = (getattr(cfg.data, "path", None), cfg.eval.samples, width, cfg.eval.correlation)
    if cache is not None and key in cache:
        return cache[key]
    try:
        source = make_source(cfg, torch.device("cpu"))
    except (ConfigError, OSError):
        return None
    try:
        z = source.latents("test")
        correlation = source.correlation
    finally:
        source.close()
    if z is None:
        return None
    level = metrics.chance_level(z, width, CHANCE_TRIALS, correlation)
    if cache is not None:
        cache[key] = level
    return level


def aggregate(table: str, specs: list[RunSpec], results: dict[RunSpec, dict]) -> list[dict]:
    """One summary object per row: the contrastive mean ± std over seeds next to the baselines
    (and, for a data table, the chance level of its MCC: :func:`random_code_level`)."""
    metric = TABLES[table]
    other = "mcc" if metric == "r2" else "r2"
    summary = []
    chance_cache: dict = {}
    for row in dict.fromkeys(s.row for s in specs):
        row_specs = [s for s in specs if s.row == row]
        first = row_specs[0]
        cfg = load_config(first.config, list(first.extra), profile=first.profile)
        # "contrastive": the row's own method (InfoNCE, or SlowVAE on a slowvae row)
        by_obj: dict[str, list[tuple[int, dict | None]]] = {o: [] for o in OBJECTIVES}
        for s in row_specs:
            key = "supervised" if s.objective == "supervised" else "contrastive"
            by_obj[key].append((s.seed, results.get(s)))
        finished = {
            o: [(seed, r) for seed, r in v if r and r.get("status") == "finished"]
            for o, v in by_obj.items()
        }
        contrastive = finished["contrastive"]
        own = own_method(cfg)
        mean, std = _stats([r["final"][metric] for _, r in contrastive])
        other_mean, other_std = _stats([r["final"][other] for _, r in contrastive])
        means = {metric: mean, other: other_mean}
        claims = [
            {
                "claim": c.describe(),
                "metric": c.metric,
                "value": means[c.metric],
                "holds": c.holds(means[c.metric]),
                "at_least": c.at_least,
                "at_most": c.at_most,
            }
            for c in cfg.claims
        ]
        sup_mean, sup_std = _stats([r["final"][metric] for _, r in finished["supervised"]])
        ident_mean, _ = _stats([r["identity"][metric] for o in OBJECTIVES for _, r in finished[o]])
        summary.append(
            {
                "row": row,
                "metric": metric,
                "mean": mean,
                "std": std,
                "seeds": [seed for seed, _ in contrastive],
                "values": [r["final"][metric] for _, r in contrastive],
                "identity": ident_mean,
                "random_code": random_code_level(cfg, chance_cache)
                if table in DATA_TABLES
                else None,
                "supervised": sup_mean,
                "supervised_std": sup_std,
                "other": {"metric": other, "mean": other_mean, "std": other_std},
                "failed": [
                    f"{o} seed{seed}"
                    for o, v in by_obj.items()
                    for seed, r in v
                    if r and r.get("status") != "finished"
                ],
                "missing": [
                    f"{own if o == 'contrastive' else o} seed{seed}"
                    for o, v in by_obj.items()
                    for seed, r in v
                    if not r
                ],
                "process": _process_label(cfg),
                "model": describe_model(cfg),
                "matched": cfg.matched,
                "claims": claims,
                "steps": cfg.train.steps,
                "batch_size": cfg.train.batch_size,
                "wall_seconds": sum(r.get("wall_seconds", 0.0) for _, r in contrastive),
            }
        )
    return summary


def _process_label(cfg: Any) -> str:
    """What generated a row's pairs: the latent process, or for a data file its name and pairing
    (the row's ``latent`` section then only states the model's assumption)."""
    if getattr(cfg.data, "source", None) == "kitti":
        return f"{Path(cfg.data.path).name}, pairs Δt ≤ {cfg.data.max_delta_t}"
    return describe_process(cfg)


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f} ± {std:.3f}" if std is not None else f"{value:.3f}"


def machine_line() -> str:
    """What machine the numbers came from."""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def claim_cell(claims: list[dict]) -> str:
    """'MCC ≥ 0.95 ✓' / '… ✗ short' / '…' (no value yet) for a row's claims; '–' when it has none."""
    if not claims:
        return "–"
    marks = {True: " ✓", False: " ✗ short", None: ""}
    return "; ".join(c["claim"] + marks[c["holds"]] for c in claims)


def render_markdown(
    table: str, summary: list[dict], command: str, quick: bool, profile: str | None = None
) -> str:
    """The table laid out like the paper's, with provenance and plain notes on shortfalls."""
    metric = TABLES[table]
    name = {"r2": "R²", "mcc": "MCC"}[metric]
    other = {"r2": "R²", "mcc": "MCC"}[summary[0]["other"]["metric"]] if summary else ""
    # a table of data files may hold SlowVAE rows: its columns are each row's own method
    method = "row's method:" if table in DATA_TABLES else "contrastive"
    scale = (
        f"{profile} profile" if profile else "quick profile" if quick else "paper-scale settings"
    )
    # a data table's MCC has a chance level worth a column (3 factors, 10 outputs: about 0.9)
    chance_head = " random codes |" if table in DATA_TABLES else ""
    lines = [
        f"# {table}: {name} ({scale})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Date: {dt.date.today().isoformat()}",
        "",
        f"| generative process | model | matched? | identity |{chance_head} supervised "
        f"| {method} {name} | {method} {other} | seeds | steps × batch | claim |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if chance_head else ""),
    ]
    notes, short = [], []
    for s in summary:
        matched = {True: "✓", False: "✗", None: "?"}[s["matched"]]
        several = len(s["seeds"]) > 1  # a std over one seed would read as certainty
        spread = s["std"] if several else None
        other_spread = s["other"]["std"] if several else None
        chance = ""
        if chance_head:
            level = s.get("random_code")
            chance = f" {_fmt(level[metric] if level else None)} |"
        lines.append(
            f"| {s['process']} | {s['model']} | {matched} | {_fmt(s['identity'])} |{chance} "
            f"{_fmt(s['supervised'])} | {_fmt(s['mean'], spread)} | "
            f"{_fmt(s['other']['mean'], other_spread)} | {len(s['seeds'])} | "
            f"{s['steps']} × {s['batch_size']} | {claim_cell(s.get('claims', []))} |"
        )
        missed = [c for c in s.get("claims", []) if c["holds"] is False]
        if missed:
            what = "; ".join(f"{c['claim']}, measured {c['value']:.3f}" for c in missed)
            short.append(f"- **{s['row']}**: {what}")
        if s["failed"]:
            notes.append(f"- **{s['row']}**: FAILED runs: {', '.join(s['failed'])}")
        if s["missing"]:
            notes.append(f"- **{s['row']}**: missing runs: {', '.join(s['missing'])}")
    if short:
        lines += ["", "**Rows short of the theory's claim at this scale:**", *short]
    if notes:
        lines += ["", "Runs not in the means:", *notes]
    if table in DATA_TABLES:
        footer = (
            "Each row: mean ± std over seeds of the row's method (InfoNCE, or SlowVAE where the "
            "model says so) on the evaluation frames, trained for the row's steps × batch; "
            "identity = a linear fit on pooled pixels; random codes = the mean MCC of "
            f"{CHANCE_TRIALS} random linear codes of the factors as wide as the encoder's output "
            "(the level an MCC must beat to mean 'aligned'; `clinvert alignment` scores the runs' "
            "own alignment); supervised = the same encoder regressed on the factors."
        )
    else:
        footer = (
            "Each row: mean ± std over seeds of the contrastive encoder on fresh test samples, "
            "trained for the row's steps × batch; identity = z against g(z); supervised = the same "
            "encoder regressed on z."
        )
    if summary and all(x["supervised"] is None and not x["missing"] for x in summary):
        footer += " (The supervised ceiling was not run here.)"
    lines += ["", footer, ""]
    return "\n".join(lines)


def reproduce(
    table: str,
    out: str | Path,
    *,
    quick: bool = False,
    seeds: int = 5,
    rows: list[str] | None = None,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    command: str = "",
    root: Path | None = None,
    collect_only: bool = False,
    data: str | None = None,
    ceiling_seeds: int | None = None,
    profile: str | None = None,
) -> list[dict]:
    """Run (or continue) a table and write ``OUT/<table>.json`` and ``OUT/<table>.md``.

    With ``collect_only`` nothing runs: the finished runs are aggregated and the others are listed
    as missing. ``ceiling_seeds`` runs the supervised ceiling for the first N seeds only.
    ``profile`` runs each row's profile of that name (``quick`` is ``profile="quick"``).
    """
    out = Path(out)
    workers = workers or default_workers()
    threads = max(1, available_cores() // workers) if backend == "local" else 1
    specs = build_specs(
        table,
        out,
        quick=quick,
        seeds=seeds,
        rows=rows,
        threads=threads,
        root=root,
        data=data,
        ceiling_seeds=ceiling_seeds,
        profile=profile,
    )
    if collect_only:
        found = {spec: current_result(spec) for spec in specs}
        results = {spec: r for spec, r in found.items() if r is not None}
    else:
        results = run_specs(
            specs,
            backend=backend,
            workers=workers,
            address=address,
            progress=progress,
            desc=f"{table} ({len(specs)} runs)",
        )
    return write_table(table, out, specs, results, command, quick, profile)


def write_table(
    table: str,
    out: Path,
    specs: list[RunSpec],
    results: dict[RunSpec, dict],
    command: str,
    quick: bool,
    profile: str | None = None,
) -> list[dict]:
    """Aggregate a table's runs and write ``OUT/<table>.json`` and ``OUT/<table>.md``."""
    summary = aggregate(table, specs, results)
    write_json(out / f"{table}.json", summary)
    write_text(out / f"{table}.md", render_markdown(table, summary, command, quick, profile))
    return summary


#: The rows ``make run`` reproduces: the claim on the sphere and in the box, and its Gaussian
#: exception, with the box model and with the unbounded model (whose minimisers include rotations).
HEADLINE: dict[str, list[str]] = {
    "table1": ["sphere-uniform-vmf10__sphere-cosine-tau0.1"],
    "table2": [
        "box-uniform-laplace0.05__box-l1",
        "box-uniform-normal0.05__box-l2",
        "box-uniform-normal0.05__unbounded-l2",
    ],
}
#: The profile of the headline rows: the quick profile cut to the steps at which each row meets its
#: claims on a 2-core CPU (each row's config says what it measured), so that ``make run`` ends in
#: minutes; the tables of ``results/quick`` use the longer ``quick`` profile.
HEADLINE_PROFILE = "headline"


def headline(
    out: str | Path,
    *,
    seeds: int = 1,
    progress: bool = True,
    workers: int | None = None,
    ceiling_seeds: int = 0,
) -> dict[str, list[dict]]:
    """Reproduce the headline rows of both tables into ``out`` (their ``headline`` profile), as
    one pool of runs, longest first; ``ceiling_seeds`` adds the supervised ceiling (default: none,
    the claims are about the contrastive runs)."""
    out = Path(out)
    workers = workers or default_workers()
    threads = max(1, available_cores() // workers)
    command = f"clinvert headline --seeds {seeds} --out {out}"
    specs = {
        table: build_specs(
            table,
            out,
            quick=True,
            seeds=seeds,
            rows=rows,
            threads=threads,
            ceiling_seeds=ceiling_seeds,
            profile=HEADLINE_PROFILE,
        )
        for table, rows in HEADLINE.items()
    }
    every = [spec for table_specs in specs.values() for spec in table_specs]
    results = run_specs(
        every, workers=workers, progress=progress, desc=f"headline ({len(every)} runs)"
    )
    return {
        table: write_table(table, out, table_specs, results, command, True, HEADLINE_PROFILE)
        for table, table_specs in specs.items()
    }
