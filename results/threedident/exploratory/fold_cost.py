"""What the InfoNCE loss charges for a fold of the rotations, per law and batch (exploratory).

An oracle encoder outputs the true latents times one scale (:mod:`clinvert.data.threedident.
objective`); here each latent is first divided by its conditional's scale (the law's own metric,
so a diagonal law's oracle is not handicapped by one scale for all), and the oracle also outputs
three defective codes of the rotations, each at its own best scale, on the same training pairs:

* ``quotient (α, γ)``: α and γ replaced by α × sign(γ) and γ × sign(α), blind to (α, γ) →
  (-α, -γ) (what `diagonal-mild`'s first phase holds early);
* ``quotient (β, γ)``: β × sign(γ) and γ × sign(β), blind to (β, γ) → (-β, -γ) (`wide`'s);
* ``seam γ × sign(α)``: γ replaced by γ × sign(α), injective but cut along α = 0 (what seed 1's
  second phase ended in).

The excess loss of each over the true latents is what the objective pays for undoing it: an
upper bound on the pressure training feels against that defect in that setting, whatever the
images show.

    python results/threedident/exploratory/fold_cost.py [--batches 8]
"""

from __future__ import annotations

import argparse

import torch

from clinvert.config import load_config
from clinvert.data.threedident.objective import oracle_loss, pair_latents
from clinvert.experiment import make_loss

CONFIG = "configs/threedident/s3-box-normal-conv.yaml"
ALPHA, BETA, GAMMA = 3, 4, 5

#: label -> (profile, overrides)
SETTINGS = {
    "`wide` (Normal(0.3)), 128 pairs": ("wide", []),
    "`diagonal-mild` (rotations 0.1, rest 0.3), 128 pairs": ("diagonal-mild", []),
    "isotropic Normal(0.6), 128 pairs": ("wide", ["latent.conditional.scale=0.6"]),
    "rotations Normal(0.6), rest 0.3, 128 pairs": (
        "wide",
        ["latent.conditional.scale=[0.3,0.3,0.3,0.6,0.6,0.6,0.3,0.3,0.3,0.3]"],
    ),
    "`wide` (Normal(0.3)), 512 pairs": ("wide", ["train.batch_size=512"]),
    "`diagonal-mild`, 512 pairs": ("diagonal-mild", ["train.batch_size=512"]),
}


def quotient(z: torch.Tensor, j: int, k: int) -> torch.Tensor:
    """z with z_j, z_k replaced by z_j sign(z_k), z_k sign(z_j)."""
    out = z.clone()
    out[:, j], out[:, k] = z[:, j] * torch.sign(z[:, k]), z[:, k] * torch.sign(z[:, j])
    return out


def seam(z: torch.Tensor) -> torch.Tensor:
    """z with γ replaced by γ sign(α)."""
    out = z.clone()
    out[:, GAMMA] = z[:, GAMMA] * torch.sign(z[:, ALPHA])
    return out


CODES = {
    "true latents": lambda z: z,
    "quotient (α, γ)": lambda z: quotient(z, ALPHA, GAMMA),
    "quotient (β, γ)": lambda z: quotient(z, BETA, GAMMA),
    "seam γ × sign(α)": seam,
}


def main() -> None:
    """Print one markdown table: per setting and pairing, the true latents' loss and each
    defect's excess over it (nats)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    names = list(CODES)
    print("| setting | pairing | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, (profile, overrides) in SETTINGS.items():
        cfg = load_config(CONFIG, overrides, profile)
        loss = make_loss(cfg)
        latents, _, _ = pair_latents(cfg, args.batches)
        sigma = torch.as_tensor(cfg.latent.conditional.scale, dtype=torch.float32)
        metric = (sigma.min() / sigma).expand(cfg.latent.dim)
        columns = list(range(cfg.latent.dim))
        for pairing, (z, zt) in latents.items():
            # each code at its own best output scale (the objective's oracle search)
            lost = {
                name: oracle_loss(
                    [code(a) * metric for a in z], [code(b) * metric for b in zt], loss, columns
                )[0]
                for name, code in CODES.items()
            }
            base = lost[names[0]]
            cells = [f"{base:.3f}"] + [f"+{lost[name] - base:.3f}" for name in names[1:]]
            print(f"| {label} | {pairing} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
