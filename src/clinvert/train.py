"""The training loop: pairs from the latent process, mixing, encoder, InfoNCE, Adam; evaluation on
fresh samples; atomic checkpoints; resume; the run directory contract of ``architecture.md``::

    DIR/config.yaml      the full resolved config
    DIR/metrics.jsonl    one JSON object per evaluation (step, loss, r2, mcc, lr, wall_seconds, ...)
    DIR/result.json      final scores on a fresh test set, identity baseline, seed, steps, wall time
    DIR/checkpoint.pt    model, optimiser, scheduler, RNG states, step (written atomically)

Two batch sources feed the same loop. Synthetic runs (``data.source: synthetic``) draw (z, z~) from
the latent process and mix them with g on the device, exactly as before the image path existed.
Image runs (``data.source: threedident``, :class:`ImageData`) draw pairs of rendered images from a
:class:`~clinvert.data.pairs.PairBatches` loader (nearest rendered latents, ``data.workers``
processes), evaluate on the held-out test dataset with per-factor scores and also write
``DIR/r2_per_factor.png``. Batch k of an image run depends only on (seed, k), so the checkpoint's
step is the loader's position and a resumed run continues exactly, with or without workers.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from clinvert import metrics
from clinvert.config import (
    ConfigError,
    RunConfig,
    check_data_dirs,
    read_run_config,
    validate_config,
)
from clinvert.io import read_jsonl, save_torch, write_bytes, write_json, write_text
from clinvert.latents import LatentProcess, make_conditional, make_marginal, make_space
from clinvert.losses import InfoNCE
from clinvert.mixing import InvertibleMLP
from clinvert.models import Model, make_model
from clinvert.runtime import keep_freed_memory

#: Independent random streams derived from the training seed.
STREAM_TRAIN, STREAM_EVAL, STREAM_TEST, STREAM_INIT, STREAM_INPUT_NORM = 0, 1, 2, 3, 4
#: Observations used to fit the encoder's input normalisation.
INPUT_NORM_SAMPLES = 20_000
#: Training images used to fit the per-channel input normalisation of an image encoder.
IMAGE_NORM_SAMPLES = 2_000
#: Images per forward pass when encoding a dataset.
IMAGE_CHUNK = 256
#: Side of the average-pooled pixel grid of the image identity baseline (at most).
PIXEL_BASELINE_GRID = 8
#: Codes of :meth:`Trainer.train_step`'s finiteness flag.
BAD_LOSS, BAD_GRAD = 1, 2
#: On an accelerator, the finiteness flags are read every this many steps (and before every
#: evaluation and checkpoint), so the device is not waited for at every step.
GUARD_EVERY = 50


class RunFailed(RuntimeError):
    """Training stopped because the loss or a gradient became non-finite."""


def derive_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for an independent random stream of a run."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint64)[0] >> 1)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device: cuda requested but no CUDA device is available, got 'cuda'"
        )
    return torch.device(name)


@dataclass
class Experiment:
    """Everything a run is made of, built from a config."""

    cfg: RunConfig
    device: torch.device
    process: LatentProcess
    mixing: InvertibleMLP | None  # None for image runs: the renderer is the mixing
    model: Model
    loss: InfoNCE


def build_process(cfg: RunConfig) -> LatentProcess:
    """The latent process of ``cfg.latent``."""
    lat = cfg.latent
    marginal = lat.marginal.model_dump(exclude={"name"})
    conditional = lat.conditional.model_dump(exclude={"name"})
    return LatentProcess(
        make_space(lat.space, lat.dim, tuple(lat.box)),
        make_marginal(lat.marginal.name, **marginal),
        make_conditional(lat.conditional.name, **conditional),
    )


def _init_model(cfg: RunConfig, device: torch.device, in_dim: int, **encoder: Any) -> Model:
    """The run's model with weights drawn from the seed's init stream (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.train.seed, STREAM_INIT))
        return make_model(
            in_dim,
            cfg.latent.dim,
            cfg.model.output,
            encoder=cfg.model.encoder,
            negative_slope=cfg.model.negative_slope,
            learnable_scale=cfg.model.learnable_scale,
            scale=cfg.model.scale,
            input_norm=cfg.model.input_norm,
            **encoder,
        ).to(device)


def build_experiment(
    cfg: RunConfig, device: torch.device | None = None, images: ImageData | None = None
) -> Experiment:
    """Build process, mixing, model and loss of a run; weights depend only on the seeds.

    An image run (``images`` given) has no mixing; its per-channel input normalisation is fitted on
    training images.
    """
    device = device or resolve_device(cfg.train.device)
    if images is not None:
        return _build_image_experiment(cfg, device, images)
    mix = cfg.mixing
    mixing = InvertibleMLP(
        cfg.latent.dim,
        mix.layers,
        cfg.mixing_seed,
        mix.cond_quantile,
        mix.cond_trials,
        mix.weights,
    ).to(device)
    model = _init_model(cfg, device, cfg.latent.dim, widths=cfg.model.widths)
    process = build_process(cfg)
    if cfg.model.input_norm != "none":
        # Fitted on observations x = g(z) only (never latents), from a stream of its own.
        gen = make_generator(derive_seed(cfg.train.seed, STREAM_INPUT_NORM), device)
        z = process.sample_marginal(INPUT_NORM_SAMPLES, gen, device)
        model.input_norm.fit(mixing(z))
    loss = _make_loss(cfg)
    return Experiment(cfg, device, process, mixing, model, loss)


def _make_loss(cfg: RunConfig) -> InfoNCE:
    """The run's contrastive loss from its ``model`` section."""
    m = cfg.model
    return InfoNCE(m.similarity, p=m.p, tau=m.tau, self_negative=m.self_negative)


def _build_image_experiment(cfg: RunConfig, device: torch.device, images: ImageData) -> Experiment:
    model = _init_model(cfg, device, 3, stem=cfg.model.stem)
    if cfg.model.input_norm != "none":
        model.input_norm.fit(images.norm_sample(device))
    loss = _make_loss(cfg)
    return Experiment(cfg, device, build_process(cfg), None, model, loss)


class ImageData:
    """The image side of a run: training pairs, the held-out test set and its scores.

    Args:
        cfg: a validated image-run config (``data.source: threedident``).
        device: the training device (images cross as bytes and become floats there).

    Raises:
        ConfigError: one line naming ``data.train_dir`` / ``data.test_dir`` and the bad file.
    """

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        from clinvert.data.images import load_image_dataset
        from clinvert.data.pairs import PairBatches
        from clinvert.latents import NoiseLaw

        check_data_dirs(cfg)
        loaded = {}
        for name in ("train_dir", "test_dir"):
            try:
                loaded[name] = load_image_dataset(getattr(cfg.data, name))
            except ConfigError as exc:
                raise ConfigError(f"data.{name}: {exc}") from None
        self.train, self.test = loaded["train_dir"], loaded["test_dir"]
        for name, ds in loaded.items():
            if len(ds.factors) != cfg.latent.dim:
                raise ConfigError(
                    f"latent.dim: the dataset in data.{name} has {len(ds.factors)} factors, "
                    f"got dim={cfg.latent.dim}"
                )
            if ds.mode == "box" and tuple(cfg.latent.box) != (-1.0, 1.0):
                raise ConfigError(
                    f"latent.box: box-mode datasets have latents in [-1, 1], got {cfg.latent.box}"
                )
        if self.test.factors != self.train.factors or self.test.mode != self.train.mode:
            raise ConfigError(
                "data.test_dir: factors or mode differ from data.train_dir "
                f"({self.test.mode} vs {self.train.mode})"
            )
        self.cfg, self.device = cfg, device
        cond = cfg.latent.conditional.model_dump(exclude={"name"})
        self.pairs = PairBatches(
            self.train,
            NoiseLaw(cfg.latent.conditional.name, **cond),
            cfg.train.batch_size,
            cfg.train.seed,
            STREAM_TRAIN,
            box=(cfg.latent.box[0], cfg.latent.box[1]),
        )
        self.eval_count = min(cfg.eval.samples, len(self.test))
        self.z_test = torch.tensor(self.test.latents[: self.eval_count])  # a copy: aligned
        self._iter: Any = None

    def norm_sample(self, device: torch.device) -> Tensor:
        """Evenly spaced training images (float [M, 3, S, S]) to fit the input normalisation."""
        from clinvert.data.images import images_to_float

        count = min(IMAGE_NORM_SAMPLES, len(self.train))
        idx = np.linspace(0, len(self.train) - 1, count).round().astype(np.int64)
        return images_to_float(np.array(self.train.images[idx]), device)

    def next_batch(self, step: int) -> dict[str, Tensor]:
        """Batch ``step`` of training pairs; the loader starts at the first step asked for."""
        from clinvert.data.pairs import make_pair_loader

        if self._iter is None:
            loader = make_pair_loader(
                self.pairs, step, max(self.cfg.train.steps, step + 1), self.cfg.data.workers
            )
            self._iter, self._next = iter(loader), step
        if step != self._next:
            raise RuntimeError(f"pair loader is at batch {self._next}, asked for {step}")
        self._next += 1
        return next(self._iter)

    def close(self) -> None:
        """Stop the loader's worker processes."""
        self._iter = None

    def floats(self, images: Tensor) -> Tensor:
        """uint8 [B, S, S, 3] -> float [B, 3, S, S] in [0, 1] on the training device."""
        from clinvert.data.images import images_to_float

        return images_to_float(images, self.device)

    @torch.no_grad()
    def encode_test(self, model: torch.nn.Module) -> Tensor:
        """f(x) of the first ``eval_count`` test images, in evaluation mode, on the CPU."""
        was_training = model.training
        model.eval()
        out = []
        for i in range(0, self.eval_count, IMAGE_CHUNK):
            chunk = np.array(self.test.images[i : min(i + IMAGE_CHUNK, self.eval_count)])
            out.append(model(self.floats(torch.from_numpy(chunk))).cpu())
        model.train(was_training)
        return torch.cat(out)

    def pixel_features(self) -> Tensor:
        """Average-pooled pixels of the test images [M, 3 k^2], k <= 8 and 3 k^2 <= M / 20.

        The cap keeps the held-out linear fit (on M / 2 images) from merely overfitting: with
        1000 test images and 192 features the baseline's R^2 was -3.3, with 48 features near 0.
        """
        grid = PIXEL_BASELINE_GRID
        while grid > 1 and 3 * grid * grid > self.eval_count // 20:
            grid //= 2
        feats = []
        for i in range(0, self.eval_count, IMAGE_CHUNK):
            chunk = np.array(self.test.images[i : min(i + IMAGE_CHUNK, self.eval_count)])
            x = self.floats(torch.from_numpy(chunk))
            feats.append(torch.nn.functional.adaptive_avg_pool2d(x, grid).flatten(1).cpu())
        self.pixel_grid = grid
        return torch.cat(feats)

    def score(self, h: Tensor) -> dict[str, Any]:
        """R^2 and MCC, overall and per factor, of ``h`` against the test latents.

        In a periodic dataset an angle factor is scored through its (cos, sin) embedding: its R^2
        is the mean over the two columns, and MCC is computed over the embedded columns (no
        per-factor MCC there).
        """
        from clinvert.data.pairs import embed_latents

        correlation = self.cfg.eval.correlation
        factors = self.test.factors
        periodic = self.test.periodic_mask()
        z = self.z_test.numpy()
        if not periodic.any():
            out = score(z, h, correlation)
            per = metrics.mcc_per_dim(z, h, correlation)
            out["r2_per_factor"] = dict(zip(factors, out["r2_per_dim"], strict=True))
            out["mcc_per_factor"] = {f: float(v) for f, v in zip(factors, per, strict=True)}
            knn = metrics.knn_r2_per_dim(z, h)
            out["knn_r2_per_factor"] = {f: float(v) for f, v in zip(factors, knn, strict=True)}
            return out
        target = embed_latents(z, periodic)
        out = score(target, h, correlation)
        linear = [f for f, p in zip(factors, periodic, strict=True) if not p]
        angles = [f for f, p in zip(factors, periodic, strict=True) if p]

        def per_factor(cols: list[float]) -> dict[str, float]:
            # an angle's two columns (cos, sin) follow the linear factors: average them
            values = dict(zip(linear, cols[: len(linear)], strict=True))
            k = len(angles)
            for i, name in enumerate(angles):
                values[name] = 0.5 * (cols[len(linear) + i] + cols[len(linear) + k + i])
            return {f: float(values[f]) for f in factors}

        out["r2_per_factor"] = per_factor(out.pop("r2_per_dim"))
        out["r2_per_dim"] = list(out["r2_per_factor"].values())
        out["r2"] = float(np.mean(out["r2_per_dim"]))
        out["knn_r2_per_factor"] = per_factor(list(metrics.knn_r2_per_dim(target, h)))
        return out


def plot_r2_per_factor(path: Path, r2_per_factor: dict[str, float], title: str) -> None:
    """Bar chart of per-factor R^2, written atomically as PNG."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=120)
    ax = fig.add_subplot()
    names = list(r2_per_factor)
    values = [max(float(v), -0.1) for v in r2_per_factor.values()]
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(min(0.0, min(values, default=0.0)), 1.05)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("R² (held-out affine fit)")
    ax.set_title(title, fontsize=9)
    for i, v in enumerate(r2_per_factor.values()):
        ax.text(i, max(float(v), 0.0) + 0.01, f"{float(v):.2f}", ha="center", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameters."""
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then constant or cosine."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "cosine" and t.steps > t.warmup_steps:
        progress = (step - t.warmup_steps) / (t.steps - t.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


@torch.no_grad()
def encode(model: torch.nn.Module, x: Tensor, chunk: int = 16384) -> Tensor:
    """f(x) in evaluation mode, in chunks."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
    model.train(was_training)
    return out


def score(z: Tensor, h: Tensor, correlation: str = "pearson") -> dict[str, Any]:
    """R^2 (held-out affine fit), per-dimension R^2 and MCC of recovered ``h`` against true ``z``."""
    per_dim = metrics.r2_per_dim(z, h)
    return {
        "r2": float(per_dim.mean()),
        "mcc": metrics.mcc(z, h, correlation),
        "r2_per_dim": [float(v) for v in per_dim],
    }


class Trainer:
    """Trains one run into a run directory. See the module docstring for the directory contract.

    Args:
        cfg: validated run configuration.
        out_dir: run directory (created).
        progress: show a progress bar.
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        device = resolve_device(cfg.train.device)
        self.images = ImageData(cfg, device) if cfg.is_image_run else None
        self.exp = build_experiment(cfg, device, self.images)
        self.device = self.exp.device
        self.optimizer = make_optimizer(cfg, self.exp.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg)
        )
        self.generator = make_generator(derive_seed(cfg.train.seed, STREAM_TRAIN), self.device)
        self.step = 0
        self.wall_seconds = 0.0
        self.last_checkpoint = 0  # step of the last checkpoint written (0: none)
        # Running sum of the training loss since the last evaluation (part of the checkpoint, so a
        # resumed run logs the same averages as an uninterrupted one).
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        if self.images is None:
            self.z_eval = self._fresh_latents(STREAM_EVAL)
            self.z_test = self._fresh_latents(STREAM_TEST)
        else:  # image runs score on the held-out test dataset (the first eval.samples images)
            self.z_eval = self.z_test = self.images.z_test
        # Flush denormal floats to zero (x86 FTZ/DAZ). At a small tau the softmax weights of far
        # negatives underflow into the denormal range, where every CPU multiply costs ~100x: an L3
        # (tau = 1.25e-4) step at B = 512 took 1.0 s with denormals and 0.15 s without. Values
        # below 1.2e-38 are far under float32's rounding of the loss. Set last, because building the
        # experiment (LAPACK calls) can reset the flag; process-wide; no effect on GPUs.
        torch.set_flush_denormal(True)
        if self.device.type == "cpu":
            # Reuse freed activations instead of faulting fresh pages in every step (clinvert.runtime).
            keep_freed_memory()

    # ----- data --------------------------------------------------------------------------------
    def _fresh_latents(self, stream: int) -> Tensor:
        gen = make_generator(derive_seed(self.cfg.train.seed, stream), self.device)
        return self.exp.process.sample_marginal(self.cfg.eval.samples, gen, self.device)

    def sample_batch(self) -> tuple[Tensor, Tensor]:
        """One training batch of observation pairs (x, x~), each [B, n] (images: [B, 3, S, S])."""
        if self.images is not None:
            batch = self.images.next_batch(self.step)
            return self.images.floats(batch["x"]), self.images.floats(batch["x_tilde"])
        z, z_tilde = self.exp.process.sample_pairs(
            self.cfg.train.batch_size, self.generator, self.device
        )
        return self.exp.mixing(z), self.exp.mixing(z_tilde)

    # ----- one step ----------------------------------------------------------------------------
    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimisation step of ``train.objective``.

        Returns the detached loss and a 0-d integer tensor on the device: 0 when the loss and every
        gradient are finite, :data:`BAD_LOSS` or :data:`BAD_GRAD` otherwise. Nothing here waits for
        the device; :meth:`run` reads the flags in batches (every step on CPU, where it is free).
        """
        objectives = {"contrastive": self.contrastive_loss, "supervised": self.supervised_loss}
        loss = objectives[self.cfg.train.objective]()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bad = (~torch.isfinite(loss)).long() * BAD_LOSS
        grads = [p.grad for p in self.exp.model.parameters() if p.grad is not None]
        if grads:
            grad_bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
            bad = torch.where(bad == 0, grad_bad.long() * BAD_GRAD, bad)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), bad

    def contrastive_loss(self) -> Tensor:
        """InfoNCE on a fresh batch of positive pairs."""
        x, x_tilde = self.sample_batch()
        batch = x.shape[0]
        h = self.exp.model(torch.cat([x, x_tilde]))  # one pass over both views: [2B, d]
        return self.exp.loss(h[:batch], h[batch:])

    def supervised_loss(self) -> Tensor:
        """The supervised baseline: mean squared error of f(g(z)) against z (the ceiling)."""
        if self.images is not None:
            batch = self.images.next_batch(self.step)
            x = self.images.floats(batch["x"])
            return torch.nn.functional.mse_loss(self.exp.model(x), batch["z"].to(self.device))
        z = self.exp.process.sample_marginal(self.cfg.train.batch_size, self.generator, self.device)
        return torch.nn.functional.mse_loss(self.exp.model(self.exp.mixing(z)), z)

    def evaluate(self, z: Tensor) -> dict[str, Any]:
        """Scores of the current encoder on latents ``z`` (fresh samples, never a training batch).

        An image run scores on its held-out test images (whose latents ``z`` are), per factor too.
        """
        if self.images is not None:
            h = self.images.encode_test(self.exp.model)
            if not torch.isfinite(h).all():
                raise RunFailed(f"non-finite encoder output at step {self.step}")
            return self.images.score(h)
        h = encode(self.exp.model, self.exp.mixing(z))
        if not torch.isfinite(h).all():
            raise RunFailed(f"non-finite encoder output at step {self.step}")
        return score(z, h, self.cfg.eval.correlation)

    def identity_scores(self) -> dict[str, Any]:
        """Baseline: scores of z against the observations g(z) themselves.

        For images the observations are pixels: the baseline is a held-out linear fit on the
        average-pooled test images (``baseline`` names the grid).
        """
        if self.images is not None:
            out = self.images.score(self.images.pixel_features())
            grid = self.images.pixel_grid
            return {"baseline": f"linear fit on {grid}x{grid}x3 average-pooled pixels", **out}
        return score(self.z_test, self.exp.mixing(self.z_test), self.cfg.eval.correlation)

    # ----- state -------------------------------------------------------------------------------
    def state_dict(self, metrics_rows: int) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        return {
            "step": self.step,
            "wall_seconds": self.wall_seconds,
            "metrics_rows": metrics_rows,
            "config": self.cfg.to_dict(),
            "model": self.exp.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "torch_version": torch.__version__,
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint; returns the number of metrics rows it covers."""
        self.exp.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.wall_seconds = float(state["wall_seconds"])
        self.loss_sum.fill_(float(state.get("loss_sum", 0.0)))
        self.loss_count = int(state.get("loss_count", 0))
        self.last_checkpoint = self.step
        return int(state["metrics_rows"])

    def save_checkpoint(self, metrics_rows: int) -> None:
        """Write ``checkpoint.pt`` atomically."""
        save_torch(self.out / "checkpoint.pt", self.state_dict(metrics_rows))
        self.last_checkpoint = self.step

    def _guard(self, first_bad: Tensor) -> None:
        """Raise :class:`RunFailed` if a step since the last check had a non-finite loss or gradient.

        The parameters after that step are not trusted: no checkpoint is written over the last good
        one, and the run is marked failed."""
        step, code = (int(v) for v in first_bad.tolist())
        if code == 0:
            return
        what = "loss" if code == BAD_LOSS else "gradient"
        kept = (
            f"checkpoint.pt from step {self.last_checkpoint} kept"
            if self.last_checkpoint
            else "no checkpoint had been written"
        )
        raise RunFailed(
            f"non-finite {what} at step {step} (try a lower train.lr or a larger model.tau); {kept}"
        )

    # ----- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``train.steps`` (continuing from the checkpoint when ``resume``) and write the run
        directory. Returns the content of ``result.json``."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        if resume:
            rows = read_jsonl(self.out / "metrics.jsonl")[: self._resume()]
        write_text(self.out / "config.yaml", cfg.to_yaml())
        write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        identity = self.identity_scores()
        status, error = "finished", None
        bar = tqdm(
            total=cfg.train.steps,
            initial=self.step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
            desc=cfg.name or "train",
        )
        started = time.perf_counter()
        base_wall = self.wall_seconds
        guard_every = 1 if self.device.type == "cpu" else GUARD_EVERY
        first_bad = torch.zeros(2, dtype=torch.long, device=self.device)  # (step, code) of 1st bad
        with open(self.out / "metrics.jsonl", "a") as log:
            try:
                if self.step == 0 and not rows:
                    rows.append(self._log_eval(log, None, bar))
                while self.step < cfg.train.steps:
                    loss, bad = self.train_step()
                    self.step += 1
                    fresh = (first_bad[1] == 0) & (bad != 0)
                    first_bad = torch.where(
                        fresh, torch.stack([bad * 0 + self.step, bad]), first_bad
                    )
                    self.loss_sum += loss
                    self.loss_count += 1
                    bar.update(1)
                    self.wall_seconds = base_wall + time.perf_counter() - started
                    do_eval = self.step % cfg.eval.every == 0 or self.step == cfg.train.steps
                    do_ckpt = self.step % cfg.train.checkpoint_every == 0
                    if do_eval or do_ckpt or self.step % guard_every == 0:
                        self._guard(first_bad)
                    if do_eval:
                        rows.append(
                            self._log_eval(log, float(self.loss_sum) / self.loss_count, bar)
                        )
                        self.loss_sum.zero_()
                        self.loss_count = 0
                    if do_ckpt:
                        self.save_checkpoint(len(rows))
            except RunFailed as exc:
                status, error = "failed", str(exc)
            finally:
                bar.close()
                if self.images is not None:
                    self.images.close()
        if status == "finished":
            self.save_checkpoint(len(rows))
        result = self._result(status, error, identity, rows)
        write_json(self.out / "result.json", result)
        if self.images is not None and "final" in result:
            title = f"{self.cfg.name or 'run'}: R² per factor at step {self.step}"
            plot_r2_per_factor(
                self.out / "r2_per_factor.png", result["final"]["r2_per_factor"], title
            )
        return result

    def _resume(self) -> int:
        path = self.out / "checkpoint.pt"
        if not path.exists():
            return 0
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            rows = self.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any unusable file is the same error to a user
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"--resume: {path} is not a usable checkpoint of this run ({reason}); "
                "delete it to restart the run, or train into a new --out"
            ) from None
        logged = len(read_jsonl(self.out / "metrics.jsonl"))
        if logged < rows:
            raise ConfigError(
                f"--resume: {self.out / 'metrics.jsonl'} holds {logged} complete rows but the "
                f"checkpoint (step {self.step}) expects {rows}; the run directory was modified"
            )
        return rows

    def _log_eval(self, log, loss: float | None, bar) -> dict[str, Any]:
        scores = self.evaluate(self.z_eval)
        row = {
            "step": self.step,
            "loss": loss,
            "r2": scores["r2"],
            "mcc": scores["mcc"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "wall_seconds": round(self.wall_seconds, 3),
        }
        head = self.exp.model.head
        if hasattr(head, "log_radius"):
            row["radius"] = float(head.log_radius.exp())
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.set_postfix(
            loss="-" if loss is None else f"{loss:.4f}",
            r2=f"{row['r2']:.3f}",
            mcc=f"{row['mcc']:.3f}",
        )
        return row

    def _result(self, status, error, identity, rows) -> dict[str, Any]:
        result: dict[str, Any] = {"status": status}
        if error:
            result["error"] = error
        if status == "finished":
            final = self.evaluate(self.z_test)
            final["loss"] = rows[-1]["loss"] if rows else None
            result["final"] = final
        result.update(
            {
                "identity": identity,
                "steps": self.step,
                "wall_seconds": round(self.wall_seconds, 3),
                "seed": self.cfg.train.seed,
                "name": self.cfg.name,
                "device": str(self.device),
                "mixing": (
                    {"condition_numbers": self.exp.mixing.condition_numbers}
                    if self.exp.mixing is not None
                    else None
                ),
                "eval_samples": (
                    self.cfg.eval.samples if self.images is None else self.images.eval_count
                ),
                "versions": {
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "threads": torch.get_num_threads(),
                },
            }
        )
        if self.images is not None:
            result["data"] = {
                "train": self.images.train.describe(),
                "test": self.images.test.describe(),
                "factors": self.images.test.factors,
                "workers": self.cfg.data.workers,
            }
        return result


def check_run_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite a finished run unless ``force``."""
    if (out / "result.json").exists() and not force:
        raise ConfigError(
            f"--out: {out} already holds a finished run (result.json); use --force to overwrite "
            "or --resume to continue"
        )


def train(
    cfg: RunConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir`` from scratch and return the result."""
    out = Path(out_dir)
    check_run_dir(out, force)
    check_data_dirs(cfg)
    if force:
        for name in ("result.json", "checkpoint.pt", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
    return Trainer(cfg, out, progress).run()


def resume(
    out_dir: str | Path, *, steps: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its checkpoint (to ``steps`` if given)."""
    out = Path(out_dir)
    data = read_run_config(out)
    if steps is not None:
        data.setdefault("train", {})["steps"] = steps
    cfg = validate_config(data)
    return Trainer(cfg, out, progress).run(resume=True)
