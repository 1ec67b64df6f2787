"""An affine read-out of rot_gamma fitted on the held-out images with rot_alpha > 0 only, applied
to all of them and drawn against the true rot_gamma, coloured by the sign of rot_alpha, for the
3DIdent runs given on the command line (fit and drawn points: the run's own halves).

    python results/threedident/exploratory/fold_scatter.py OUT.png RUN [RUN ...]

An affine code gives one line for both colours; a code that holds rot_gamma * sign(rot_alpha)
gives a cross: the read-out that is right for alpha > 0 is flipped for alpha < 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

from clinvert.config import read_run_config, validate_config  # noqa: E402
from clinvert.data.threedident.factors import FACTORS  # noqa: E402
from clinvert.data.threedident.probe import encode_dataset  # noqa: E402
from clinvert.metrics import _halves  # noqa: E402

out, runs = sys.argv[1], sys.argv[2:]
alpha, gamma = FACTORS.index("rot_alpha"), FACTORS.index("rot_gamma")
fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4), squeeze=False)
for ax, run in zip(axes[0], runs, strict=True):
    cfg = validate_config(read_run_config(run))
    data, h = encode_dataset(run, cfg, cfg.data.test_dir, cfg.eval.samples)
    z = np.asarray(data.latents[: len(h)], dtype=np.float64)
    fit, test = _halves(len(z), 0)
    fit = fit[z[fit, alpha] > 0]
    pred = LinearRegression().fit(h[fit], z[fit, gamma]).predict(h[test])
    for side, colour, label in ((1, "tab:red", "α > 0"), (-1, "tab:blue", "α < 0")):
        m = np.sign(z[test, alpha]) == side
        ax.scatter(z[test][m, gamma], pred[m], s=3, c=colour, alpha=0.5, label=label)
    ax.set_title(Path(run).name.replace("s3-box-normal-conv-wide-64-", ""), fontsize=8)
    ax.set_xlabel("true γ (latent)")
    ax.set_ylabel("γ read out as fitted on α > 0")
    ax.legend(markerscale=4, fontsize=8)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(out)
