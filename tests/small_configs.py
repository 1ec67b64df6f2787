"""Small synthetic configs shared by tests that need a quick box / L1 run (not a test module)."""

from __future__ import annotations

from typing import Any


def box_l1(
    dim: int,
    width: int,
    batch_size: int,
    steps: int,
    *,
    tau: float = 1.0,
    eval_every: int | None = None,
    eval_samples: int = 256,
    **train: Any,
) -> dict[str, Any]:
    """A uniform box with Laplace pairs mixed by a 2-layer MLP, learned by an L1 InfoNCE with a box
    output and one hidden layer of ``width``; ``train`` adds fields to the ``train`` section."""
    return {
        "latent": {
            "dim": dim,
            "space": "box",
            "box": [0.0, 1.0],
            "marginal": {"name": "uniform"},
            "conditional": {"name": "laplace", "scale": 0.1},
        },
        "mixing": {"layers": 2},
        "model": {"widths": [width], "output": "box", "similarity": "lp", "p": 1, "tau": tau},
        "train": {"batch_size": batch_size, "steps": steps, "lr": 1e-3, **train},
        "eval": {"every": eval_every or steps, "samples": eval_samples},
    }
