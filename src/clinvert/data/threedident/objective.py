"""What a 3DIdent config's InfoNCE loss rewards, known before any training.

An *oracle* encoder outputs the true latents times one scale (the best on a grid). On the
config's training pairs it reaches some loss; dropping factors from its output raises the loss.
That rise is what the objective pays for encoding those factors: an upper bound on the gradient
signal an encoder can get from them, whatever the images show. It depends only on the pairs
(the dataset's latents, the conditional, the batch size) and the loss (similarity, p, tau,
self-negatives), so it is a property of the setting, not of a run.

Two pairings are measured on the same random draws:

* ``snapped``: the pairs training sees. z and z~ are drawn, then each is replaced by its nearest
  rendered latent (:class:`~clinvert.data.pairs.PairBatches`).
* ``exact``: z and z~ as drawn, as if an image were rendered at every z~.

A setting in which the oracle already reaches about 0 without the dropped factors gives them no
reward at all: the loss is saturated by the others (e.g. exact Normal(0.05) positives against 127
negatives are told apart by any seven of the ten factors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clinvert.config import RunConfig, format_param
from clinvert.errors import ConfigError

#: Oracle output scales searched (log-spaced); the loss is smooth and one-dipped in log scale.
SCALES = np.geomspace(1e-2, 1e4, 121)
ROTATIONS = ("rot_alpha", "rot_beta", "rot_gamma")


@dataclass(frozen=True)
class OracleRow:
    """One pairing's oracle losses (nats, mean over the batches).

    Attributes:
        pairing: ``snapped`` or ``exact``.
        batch_size, batches: pairs per batch and batches averaged.
        distance: mean Euclidean distance between the latents of a pair.
        full, full_scale: the oracle's loss with every factor, and its best scale.
        dropped, dropped_scale: the same without the dropped factors.
        pull: how hard the loss pulls on a small encoding of the dropped factors when the
            others are encoded at their best scale: -d²L/dε² at ε = 0, for outputs ``(s z_kept,
            ε z_dropped)``. The loss is even in ε, so a missing factor is a saddle point, and a
            weak encoding of it grows at a rate set by this curvature.
        chance: the loss of a constant encoder (log of the batch size; log(B + 1) with
            self-negatives).
    """

    pairing: str
    batch_size: int
    batches: int
    distance: float
    full: float
    full_scale: float
    dropped: float
    dropped_scale: float
    pull: float
    chance: float

    @property
    def reward(self) -> float:
        """How much lower the loss is when the dropped factors are encoded too."""
        return self.dropped - self.full


def embedded_columns(factors: list[int], periodic: np.ndarray) -> list[int]:
    """Columns of :func:`clinvert.metrics.embed_latents` that hold the factors ``factors``.

    Linear factors come first, then all cosines, then all sines of the angle factors.
    """
    periodic = np.asarray(periodic, dtype=bool)
    linear = [i for i in range(len(periodic)) if not periodic[i]]
    angles = [i for i in range(len(periodic)) if periodic[i]]
    cols = [linear.index(f) for f in factors if f in linear]
    base = len(linear)
    cols += [base + angles.index(f) for f in factors if f in angles]
    cols += [base + len(angles) + angles.index(f) for f in factors if f in angles]
    return sorted(cols)


def oracle_loss(
    z: list[torch.Tensor], z_tilde: list[torch.Tensor], loss: torch.nn.Module, columns: list[int]
) -> tuple[float, float]:
    """(best mean loss, its scale) of the encoder ``scale * z[:, columns]`` over the batches.

    One scale serves every batch (the best on :data:`SCALES`). With no column the encoder is
    constant and the loss is its chance value.
    """
    best = (float("inf"), float("nan"))
    with torch.no_grad():
        for scale in SCALES:
            values = [
                float(loss(a[:, columns] * float(scale), b[:, columns] * float(scale)))
                for a, b in zip(z, z_tilde, strict=True)
            ]
            mean = float(np.mean(values))
            if mean < best[0]:
                best = (mean, float(scale))
            if not columns:
                break  # every scale gives the same loss
    return best


def oracle_pull(
    z: list[torch.Tensor],
    z_tilde: list[torch.Tensor],
    loss: torch.nn.Module,
    kept: list[int],
    dropped: list[int],
    scale: float,
    eps: float = 1e-3,
) -> float:
    """-d²L/dε² at ε = 0 (mean over the batches) of the encoder ``(scale z[:, kept], ε
    z[:, dropped])``, by a central difference in float64 (L is even in ε)."""

    def at(e: float) -> float:
        values = []
        for a, b in zip(z, z_tilde, strict=True):
            a, b = a.double(), b.double()
            fa = torch.cat([a[:, kept] * scale, a[:, dropped] * e], dim=1)
            fb = torch.cat([b[:, kept] * scale, b[:, dropped] * e], dim=1)
            values.append(float(loss(fa, fb)))
        return float(np.mean(values))

    with torch.no_grad():
        return -2.0 * (at(eps) - at(0.0)) / eps**2


def pair_latents(
    cfg: RunConfig, batches: int
) -> tuple[dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]], np.ndarray, list[str]]:
    """The first ``batches`` training batches' latents of a 3DIdent config, both pairings.

    Returns ``({"snapped": (z, z~), "exact": (z, z~)}, periodic mask, factor names)``; latents in
    the embedding of :func:`clinvert.metrics.embed_latents` (float32 tensors [B, m]).
    """
    from clinvert.data.threedident.source import ThreeDIdentSource
    from clinvert.metrics import embed_latents

    # The run's own source: the same dataset checks and the same pair batches (shards included)
    # as training in one process; nothing is encoded, so the device does not matter.
    source = ThreeDIdentSource(cfg, torch.device("cpu"))
    dataset, pairs = source.train, source.batches
    periodic = dataset.periodic_mask()
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
        "snapped": ([], []),
        "exact": ([], []),
    }
    for k in range(batches):
        query, query_tilde = pairs.sample_latents(k)
        i, j = pairs.snap(query.numpy(), query_tilde.numpy())
        for name, (a, b) in {
            "snapped": (dataset.latents[i], dataset.latents[j]),
            "exact": (query.numpy(), query_tilde.numpy()),
        }.items():
            out[name][0].append(torch.from_numpy(embed_latents(a, periodic)))
            out[name][1].append(torch.from_numpy(embed_latents(b, periodic)))
    return out, periodic, dataset.factors


def oracle_rows(
    cfg: RunConfig, drop: tuple[str, ...] = ROTATIONS, batches: int = 8
) -> list[OracleRow]:
    """The oracle's losses on a validated 3DIdent config's pairs, with and without ``drop``.

    Raises:
        ConfigError: one line for a config that is not a 3DIdent run, an unknown factor in
            ``drop`` or a ``batches`` below 1.
    """
    from clinvert.experiment import make_loss

    if cfg.data.source != "threedident":
        raise ConfigError(f"data.source: the oracle needs a 3DIdent config, got {cfg.data.source}")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"--batches: must be an integer >= 1, got {batches!r}")
    latents, periodic, factors = pair_latents(cfg, batches)
    unknown = [f for f in drop if f not in factors]
    if unknown or not drop:
        raise ConfigError(
            f"--drop: factors must be among {', '.join(factors)}, got {', '.join(drop) or 'none'}"
        )
    keep = [i for i, f in enumerate(factors) if f not in drop]
    loss = make_loss(cfg)
    every = embedded_columns(list(range(len(factors))), periodic)
    kept = embedded_columns(keep, periodic)
    gone = [c for c in every if c not in kept]
    rows = []
    for name, (z, z_tilde) in latents.items():
        full, full_scale = oracle_loss(z, z_tilde, loss, every)
        dropped, dropped_scale = oracle_loss(z, z_tilde, loss, kept)
        distance = float(
            torch.cat([(a - b).norm(dim=1) for a, b in zip(z, z_tilde, strict=True)]).mean()
        )
        rows.append(
            OracleRow(
                name,
                cfg.train.batch_size,
                batches,
                distance,
                full,
                full_scale,
                dropped,
                dropped_scale,
                oracle_pull(z, z_tilde, loss, kept, gone, dropped_scale),
                oracle_loss(z, z_tilde, loss, [])[0],
            )
        )
    return rows


def describe_setting(cfg: RunConfig) -> str:
    """Short label of a config's pairing setting: name, training images, conditional."""
    law = cfg.latent.conditional
    params = ", ".join(
        f"{k}={format_param(v)}" for k, v in law.model_dump(exclude={"name"}).items()
    )
    own = ", self-negatives" if cfg.model.self_negative else ""
    return f"{cfg.name}: {cfg.data.train_dir}, {law.name}({params}){own}"


def oracle_table(entries: list[tuple[str, list[OracleRow]]], drop: tuple[str, ...]) -> str:
    """Markdown table of (setting label, :func:`oracle_rows`) entries, one line per pairing."""
    without = ", ".join(drop)
    lines = [
        f"| setting | pairing | batches × pairs | mean ‖z − z~‖ | oracle loss, all factors | "
        f"without {without} | reward of {without} | pull on {without} | constant encoder |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for title, rows in entries:
        for r in rows:
            lines.append(
                f"| {title} | {r.pairing} | {r.batches} × {r.batch_size} | {r.distance:.3f} | "
                f"{r.full:.3f} | {r.dropped:.3f} | **{r.reward:.3f}** | {r.pull:.3f} | {r.chance:.3f} |"
            )
    return "\n".join(lines) + "\n"
