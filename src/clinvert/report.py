"""Reports of a reproduction directory: PNG plots with matplotlib and a self-contained report.html.

For every ``<table>.json`` written by ``clinvert reproduce`` in the directory:

* ``<table>_bars.png``: per row, contrastive mean ± std over seeds next to identity and supervised;
* ``<table>_curves.png``: the table's metric over training steps for every contrastive run;
* ``<table>_scatter.png``: true versus recovered latents for one run (the picture of "inversion").
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

from clinvert.config import ConfigError, read_run_config, validate_config  # noqa: E402
from clinvert.io import read_jsonl, write_bytes, write_text  # noqa: E402
from clinvert.metrics import correlation_matrix  # noqa: E402
from clinvert.reproduce import DATA_TABLES, TABLES, claim_cell  # noqa: E402

LABEL = {"r2": "R²", "mcc": "MCC"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_bars(table: str, summary: list[dict]) -> bytes:
    """Grouped bars: identity, supervised and contrastive (± std) per row."""
    metric = TABLES[table]
    rows = [s["row"] for s in summary]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.5))

    def values(key: str) -> np.ndarray:
        return np.array([np.nan if s[key] is None else s[key] for s in summary], dtype=float)

    ax.bar(x - 0.27, values("identity"), 0.27, label="identity z vs g(z)", color="#bbbbbb")
    ax.bar(x, values("supervised"), 0.27, label="supervised", color="#7fa7d9")
    ax.bar(
        x + 0.27,
        values("mean"),
        0.27,
        yerr=np.nan_to_num(values("std")),
        capsize=3,
        label="contrastive (mean ± std)",
        color="#d9534f",
    )
    for i, s in enumerate(summary):
        # each seed as a dot on its bar (tables written before 0.2 hold no per-seed values)
        seeds = s.get("values") or []
        if seeds:
            jitter = np.linspace(-0.07, 0.07, len(seeds)) if len(seeds) > 1 else np.zeros(1)
            ax.scatter(
                x[i] + 0.27 + jitter,
                seeds,
                s=9,
                color="black",
                zorder=3,
                label="each seed" if i == 0 else None,
            )
        # the claim's threshold on this table's metric, across the row's group of bars
        for c in s.get("claims", []):
            if c.get("metric") != metric:
                continue
            for key, style in (("at_least", "-"), ("at_most", "--")):
                if c.get(key) is not None:
                    ax.hlines(
                        c[key],
                        x[i] - 0.42,
                        x[i] + 0.42,
                        colors="#2a7d2a",
                        linestyles=style,
                        lw=1.2,
                        zorder=4,
                    )
        if s["failed"] or s["missing"]:
            ax.annotate("incomplete", (x[i], 0.02), ha="center", fontsize=7, rotation=90)
    ax.plot([], [], color="#2a7d2a", lw=1.2, label="claim: at least (solid), at most (dashed)")
    ax.set_xticks(x, rows, rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(LABEL[metric])
    ax.set_title(f"{table}: {LABEL[metric]} per row")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_curves(table: str, out: Path, summary: list[dict]) -> bytes:
    """The table's metric over steps for every contrastive run, one colour per row."""
    metric = TABLES[table]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.tab10(np.linspace(0, 1, max(10, len(summary))))
    for colour, s in zip(colours, summary, strict=False):
        for k, seed_dir in enumerate(sorted((out / "runs" / s["row"]).glob("seed*"))):
            # the row's own method: contrastive, or slowvae on a SlowVAE row of the KITTI table
            own = [d for d in sorted(seed_dir.iterdir()) if d.is_dir() and d.name != "supervised"]
            metrics = own[0] / "metrics.jsonl" if own else None
            rows = read_jsonl(metrics) if metrics is not None and metrics.exists() else []
            if rows:
                ax.plot(
                    [r["step"] for r in rows],
                    [r[metric] for r in rows],
                    color=colour,
                    alpha=0.8,
                    lw=1,
                    label=s["row"] if k == 0 else None,
                )
    ax.set_xlabel("step")
    ax.set_ylabel(f"{LABEL[metric]} (evaluation set)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(f"{table}: training curves")
    return _png(fig)


def recovered_latents(run: Path, samples: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Fresh latents z and the encoder's f(g(z)) for a finished run directory."""
    from clinvert.data.sources import STREAM_TEST, derive_seed, encode, make_generator
    from clinvert.experiment import build_experiment
    from clinvert.rundir import load_checkpoint, trained_weights

    cfg = validate_config(read_run_config(run))
    device = torch.device("cpu")
    exp = build_experiment(cfg, device)
    state = load_checkpoint(run / "checkpoint.pt", device)
    exp.model.load_state_dict(trained_weights(state))
    gen = make_generator(derive_seed(cfg.train.seed, STREAM_TEST), device)
    z = exp.process.sample_marginal(samples, gen, device)
    h = encode(exp.model, exp.mixing(z))
    return z.numpy(), h.numpy()


def plot_scatter(table: str, run: Path, dims: int = 4) -> bytes:
    """True vs recovered latents: affine prediction (table1) or Hungarian-matched unit (table2)."""
    z, h = recovered_latents(run)
    metric = TABLES[table]
    if metric == "r2":
        recovered = LinearRegression().fit(h, z).predict(h)
        ylabel = "affine fit from f(g(z))"
        pairs = [(i, i) for i in range(z.shape[1])]
    else:
        corr = correlation_matrix(z, h)
        rows, cols = linear_sum_assignment(-np.abs(corr))
        signs = np.sign(corr[rows, cols])
        recovered = h.copy()
        recovered[:, cols] *= signs[None, :]
        ylabel = "matched unit of f(g(z)), sign-aligned"
        pairs = list(zip(rows, cols, strict=True))
    n = min(dims, len(pairs))
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3))
    for ax, (i, j) in zip(np.atleast_1d(axes), pairs[:n], strict=False):
        ax.scatter(z[:, i], recovered[:, j], s=2, alpha=0.4)
        ax.set_xlabel(f"true z[{i}]")
        ax.set_ylabel(f"{ylabel} [{j}]", fontsize=7)
    fig.suptitle(f"{table}: {run.parent.parent.name} ({run.parent.name})", fontsize=9)
    return _png(fig)


def _html_table(summary: list[dict], metric: str) -> str:
    other = LABEL["mcc" if metric == "r2" else "r2"]
    head = [
        "row",
        "generative process",
        "model",
        "matched?",
        "identity",
        "supervised",
        f"contrastive {LABEL[metric]}",
        f"contrastive {other}",
        "seeds",
        "claim",
        "status",
    ]

    def fmt(v: Any, sd: Any = None) -> str:
        if v is None:
            return "–"
        return f"{v:.3f} ± {sd:.3f}" if sd is not None else f"{v:.3f}"

    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for s in summary:
        problems = []
        if s["failed"]:
            problems.append("<b class=bad>failed: " + html.escape(", ".join(s["failed"])) + "</b>")
        if s["missing"]:
            problems.append(
                "<b class=bad>missing: " + html.escape(", ".join(s["missing"])) + "</b>"
            )
        status = " ".join(problems) or "complete"
        claim = html.escape(claim_cell(s.get("claims", [])))
        if any(c["holds"] is False for c in s.get("claims", [])):
            claim = f"<b class=bad>{claim}</b>"
        cells = [
            s["row"],
            s["process"],
            s["model"],
            {True: "✓", False: "✗", None: "?"}[s["matched"]],
            fmt(s["identity"]),
            fmt(s["supervised"]),
            fmt(s["mean"], s["std"]),
            fmt(s["other"]["mean"], s["other"]["std"]),
            str(len(s["seeds"])),
            claim,
            status,
        ]
        out.append(
            "<tr>"
            + "".join(f"<td>{html.escape(c) if '<b' not in c else c}</td>" for c in cells)
            + "</tr>"
        )
    return "\n".join(out + ["</table>"])


def _first_finished_run(out: Path, summary: list[dict]) -> Path | None:
    """A finished contrastive run of the best-scoring row whose checkpoint is at hand (the title
    names the row); None when there is none (committed results carry no checkpoints)."""
    ranked = sorted(summary, key=lambda s: -1.0 if s["mean"] is None else s["mean"], reverse=True)
    for s in ranked:
        for seed_dir in sorted((out / "runs" / s["row"]).glob("seed*")):
            run = seed_dir / "contrastive"
            result = run / "result.json"
            if not (run / "checkpoint.pt").exists() or not result.exists():
                continue
            if json.loads(result.read_text()).get("status") == "finished":
                return run
    return None


def render_report(directory: str | Path) -> Path:
    """Write the PNG plots and ``report.html`` for every table in ``directory``."""
    out = Path(directory)
    tables = [t for t in TABLES if (out / f"{t}.json").exists()]
    if not tables:
        names = " or ".join(f"{t}.json" for t in TABLES)
        raise ConfigError(f"dir: no {names} in {out}; run 'clinvert reproduce'")
    sections = []
    for table in tables:
        summary = json.loads((out / f"{table}.json").read_text())
        metric = TABLES[table]
        images = {"bars": plot_bars(table, summary), "curves": plot_curves(table, out, summary)}
        # the scatter re-samples the synthetic latent process: tables of data files have none
        run = _first_finished_run(out, summary) if table not in DATA_TABLES else None
        if run is not None:
            images["scatter"] = plot_scatter(table, run)
        for kind, data in images.items():
            write_bytes(out / f"{table}_{kind}.png", data)
        md = out / f"{table}.md"
        provenance = (
            "".join(
                f"<p>{html.escape(line.rstrip(' '))}</p>"
                for line in md.read_text().splitlines()[2:5]
            )
            if md.exists()
            else ""
        )
        imgs = "".join(
            f'<img alt="{table} {k}" src="data:image/png;base64,{base64.b64encode(v).decode()}">'
            for k, v in images.items()
        )
        sections.append(
            f"<h2>{table}: {LABEL[metric]}</h2>{provenance}{_html_table(summary, metric)}{imgs}"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>clinvert report</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px}.bad{color:#b00}"
        "img{max-width:100%;display:block;margin:1em 0}</style></head><body>"
        "<h1>clinvert: contrastive learning inverts the data generating process</h1>"
        + "".join(sections)
        + "</body></html>\n"
    )
    path = out / "report.html"
    write_text(path, page)
    return path
