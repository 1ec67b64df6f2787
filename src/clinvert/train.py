"""The training loop: pairs from the latent process, mixing, encoder, InfoNCE, Adam; evaluation on
fresh samples; atomic checkpoints; resume; the run directory contract of ``architecture.md``::

    DIR/config.yaml      the full resolved config
    DIR/metrics.jsonl    one JSON object per evaluation (step, loss, r2, mcc, lr, wall_seconds, ...)
    DIR/result.json      final scores on a fresh test set, identity baseline, seed, steps, wall time
    DIR/checkpoint.pt    model, optimiser, scheduler, RNG states, step (written atomically)
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
from clinvert.config import ConfigError, RunConfig, read_yaml, validate_config
from clinvert.io import read_jsonl, save_torch, write_json, write_text
from clinvert.latents import LatentProcess, make_conditional, make_marginal, make_space
from clinvert.losses import InfoNCE
from clinvert.mixing import InvertibleMLP
from clinvert.models import Model, make_model

#: Independent random streams derived from the training seed.
STREAM_TRAIN, STREAM_EVAL, STREAM_TEST, STREAM_INIT, STREAM_INPUT_NORM = 0, 1, 2, 3, 4
#: Observations used to fit the encoder's input normalisation.
INPUT_NORM_SAMPLES = 20_000
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
    mixing: InvertibleMLP
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


def build_experiment(cfg: RunConfig, device: torch.device | None = None) -> Experiment:
    """Build process, mixing, model and loss of a run; weights depend only on the seeds."""
    device = device or resolve_device(cfg.train.device)
    mix = cfg.mixing
    mixing = InvertibleMLP(
        cfg.latent.dim, mix.layers, cfg.mixing_seed, mix.cond_quantile, mix.cond_trials
    ).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.train.seed, STREAM_INIT))
        model = make_model(
            cfg.latent.dim,
            cfg.latent.dim,
            cfg.model.output,
            encoder=cfg.model.encoder,
            widths=cfg.model.widths,
            negative_slope=cfg.model.negative_slope,
            learnable_scale=cfg.model.learnable_scale,
            scale=cfg.model.scale,
            input_norm=cfg.model.input_norm,
        ).to(device)
    process = build_process(cfg)
    if cfg.model.input_norm != "none":
        # Fitted on observations x = g(z) only (never latents), from a stream of its own.
        gen = make_generator(derive_seed(cfg.train.seed, STREAM_INPUT_NORM), device)
        z = process.sample_marginal(INPUT_NORM_SAMPLES, gen, device)
        model.input_norm.fit(mixing(z))
    loss = InfoNCE(cfg.model.similarity, p=cfg.model.p, tau=cfg.model.tau)
    return Experiment(cfg, device, process, mixing, model, loss)


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
        self.exp = build_experiment(cfg)
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
        self.z_eval = self._fresh_latents(STREAM_EVAL)
        self.z_test = self._fresh_latents(STREAM_TEST)

    # ----- data --------------------------------------------------------------------------------
    def _fresh_latents(self, stream: int) -> Tensor:
        gen = make_generator(derive_seed(self.cfg.train.seed, stream), self.device)
        return self.exp.process.sample_marginal(self.cfg.eval.samples, gen, self.device)

    def sample_batch(self) -> tuple[Tensor, Tensor]:
        """One training batch of observation pairs (x, x~), each [B, n]."""
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
        z = self.exp.process.sample_marginal(self.cfg.train.batch_size, self.generator, self.device)
        return torch.nn.functional.mse_loss(self.exp.model(self.exp.mixing(z)), z)

    def evaluate(self, z: Tensor) -> dict[str, Any]:
        """Scores of the current encoder on latents ``z`` (fresh samples, never a training batch)."""
        h = encode(self.exp.model, self.exp.mixing(z))
        if not torch.isfinite(h).all():
            raise RunFailed(f"non-finite encoder output at step {self.step}")
        return score(z, h, self.cfg.eval.correlation)

    def identity_scores(self) -> dict[str, Any]:
        """Baseline: scores of z against the observations g(z) themselves."""
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
        if status == "finished":
            self.save_checkpoint(len(rows))
        result = self._result(status, error, identity, rows)
        write_json(self.out / "result.json", result)
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
                "mixing": {"condition_numbers": self.exp.mixing.condition_numbers},
                "eval_samples": self.cfg.eval.samples,
                "versions": {
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "threads": torch.get_num_threads(),
                },
            }
        )
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
    if force:
        for name in ("result.json", "checkpoint.pt", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
    return Trainer(cfg, out, progress).run()


def resume(
    out_dir: str | Path, *, steps: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its checkpoint (to ``steps`` if given)."""
    out = Path(out_dir)
    data = read_yaml(out / "config.yaml")
    if steps is not None:
        data.setdefault("train", {})["steps"] = steps
    cfg = validate_config(data)
    return Trainer(cfg, out, progress).run(resume=True)
