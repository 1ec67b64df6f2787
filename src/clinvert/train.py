"""The training loop and nothing else: steps, evaluations, the finiteness guard, callbacks.

:class:`Trainer` takes an :class:`~clinvert.experiment.Experiment` (or a config, from which it builds
one) and trains it. It never asks what kind of data it trains on: the experiment's pair source
gives batches, encodes and scores its evaluation set, and holds its part of the resumable state. It
writes nothing itself: the run directory (:class:`~clinvert.rundir.RunDirectory`) and loggers are
callbacks, so the same loop serves ``clinvert train`` and the in-memory estimator.

:func:`train` and :func:`resume` are the run-directory entry points of the command line.
"""

from __future__ import annotations

import inspect
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clinvert import distributed
from clinvert.callbacks import Callback
from clinvert.config import RunConfig, check_data_dirs, read_run_config, validate_config
from clinvert.data.sources import (  # noqa: F401 - re-exported for scripts of earlier versions
    STREAM_EVAL,
    STREAM_INIT,
    STREAM_INPUT_NORM,
    STREAM_NOISE,
    STREAM_TEST,
    STREAM_TRAIN,
    PairSource,
    Shards,
    batch_seed,
    derive_seed,
    encode,
    make_generator,
    score,
)
from clinvert.ema import WeightEMA
from clinvert.errors import ConfigError
from clinvert.experiment import (  # noqa: F401 - re-exported
    Experiment,
    build_experiment,
    lr_factor,
    make_optimizer,
    resolve_device,
)
from clinvert.provenance import provenance
from clinvert.rundir import (
    CHECKPOINT,
    check_run_dir,
    load_checkpoint,
    run_callbacks,
    trained_weights,
)

#: Codes of :meth:`Trainer.train_step`'s finiteness flag.
BAD_LOSS, BAD_GRAD = 1, 2
#: On an accelerator, the finiteness flags are read every this many steps (and before every
#: evaluation and checkpoint), so the device is not waited for at every step.
GUARD_EVERY = 50
#: DistributedDataParallel's gradient bucket size (MiB); see :meth:`Trainer._distribute`.
DDP_BUCKET_MB = 25


class RunFailed(RuntimeError):
    """Training stopped because the loss or a gradient became non-finite."""


class Objective(torch.nn.Module):
    """The training objective as one module, ``forward(step) -> loss`` of batch ``step``: what
    ``DistributedDataParallel`` wraps in a distributed run (its parameters are the model's)."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.model = trainer.exp.model
        self._loss = {
            "contrastive": trainer.contrastive_loss,
            "supervised": trainer.supervised_loss,
            "slowvae": trainer.slowvae_loss,
        }[trainer.cfg.train.objective]

    def forward(self, step: int) -> Tensor:
        """The loss of batch ``step`` (this process's rows of it)."""
        return self._loss()


class Trainer:
    """Trains one experiment, calling ``callbacks`` at its evaluations, checkpoints and end.

    Args:
        experiment: an :class:`Experiment`, or a validated config to build one from.
        out_dir: a run directory to write (adds :func:`~clinvert.rundir.run_callbacks`); None
            trains in memory.
        progress: show a progress bar (steps, loss, R², MCC).
        callbacks: further :class:`~clinvert.callbacks.Callback` objects (loggers).
        source: with a config, a pair source built already (in-memory arrays).
    """

    def __init__(
        self,
        experiment: Experiment | RunConfig,
        out_dir: str | Path | None = None,
        progress: bool = True,
        *,
        callbacks: Iterable[Callback] = (),
        source: PairSource | None = None,
    ) -> None:
        if isinstance(experiment, Experiment):
            self.exp = experiment
        else:
            self.exp = build_experiment(experiment, source=source)
        self.cfg = cfg = self.exp.cfg
        self.source = self.exp.source
        self.device = self.exp.device
        #: this process's place in a distributed run; only rank 0 evaluates and writes
        self.world = distributed.world()
        self.out = Path(out_dir) if out_dir is not None else None
        main = self.world.is_main
        self.callbacks: list[Callback] = run_callbacks(cfg, self.out) if self.out and main else []
        self.callbacks += list(callbacks) if main else []
        self.progress = progress and main
        self.shards = Shards.of(cfg)
        self.autocast = cfg.train.precision == "bf16"
        if cfg.train.precision == "tf32" and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.objective: torch.nn.Module = Objective(self)
        #: every rank's loss is the whole batch's (replicated InfoNCE): nothing to average, and
        #: a non-finite loss is seen by every rank at once
        self.loss_is_global = (
            cfg.train.objective == "contrastive" and cfg.train.distributed_loss == "replicated"
        )
        self._fault = bool(os.environ.get(distributed.FAULT_ENV))
        self.optimizer = make_optimizer(cfg, self.exp.model)
        #: the weights' moving average (``train.ema``): what evaluation and results use
        self.ema = WeightEMA(self.exp.model, cfg.train.ema) if cfg.train.ema else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg)
        )
        self.step = 0
        self.wall_seconds = 0.0
        self.last_checkpoint = 0  # step of the last checkpoint written (0: none)
        self.rows: list[dict[str, Any]] = []  # metrics rows so far (restored on resume)
        # Running sum of the training loss since the last evaluation (part of the checkpoint, so a
        # resumed run logs the same averages as an uninterrupted one).
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        #: whether ``train.init_from``'s weights are loaded (a fresh run loads them once)
        self.initialised = False

    # ----- one step ----------------------------------------------------------------------------
    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimisation step of ``train.objective`` on batch ``self.step``.

        Returns the detached loss and a 0-d integer tensor on the device: 0 when the loss and every
        gradient are finite, :data:`BAD_LOSS` or :data:`BAD_GRAD` otherwise. Nothing here waits for
        the device; :meth:`run` reads the flags in batches (every step on CPU, where it is free).
        """
        if self._fault:
            distributed.maybe_fail(self.step)
        loss = self.objective(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # in a distributed run, DDP averages the gradients over the ranks here
        loss_bad = ~torch.isfinite(loss.detach())
        if self.world.distributed and not self.loss_is_global:
            # the global batch's loss is the mean of the ranks' (equal shards); any rank's bad
            # loss stops every rank (their gradients, averaged, are bad too)
            both = distributed.sum_over_ranks(torch.stack([loss.detach(), loss_bad.to(loss.dtype)]))
            loss, loss_bad = both[0] / self.world.size, both[1] > 0
        bad = loss_bad.long() * BAD_LOSS
        grads = [p.grad for p in self.exp.model.parameters() if p.grad is not None]
        if grads:
            grad_bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
            bad = torch.where(bad == 0, grad_bad.long() * BAD_GRAD, bad)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.exp.model)
        return loss.detach(), bad

    @property
    def eval_model(self) -> torch.nn.Module:
        """The encoder that evaluation, results and saved models use: the moving average of the
        weights with ``train.ema``, else the trained weights themselves."""
        return self.ema.module if self.ema is not None else self.exp.model

    def _encode(self, x: Tensor) -> Tensor:
        """f(x) for training, under ``train.precision``'s autocast (outputs in float32)."""
        if not self.autocast:
            return self.exp.model(x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            h = self.exp.model(x)
        return h.float()

    def contrastive_loss(self) -> Tensor:
        """InfoNCE on batch ``self.step`` of positive pairs.

        In a distributed run (``train.distributed_loss``): ``replicated``, every rank computes the
        single-process loss of the global batch from the gathered embeddings, each backpropagating
        through its own samples only; ``rows``, this rank's anchors against the positives of
        every rank (gradients flowing back to their owners), averaged over its rows. Either way
        DDP's mean over the ranks makes the update the single-process one."""
        x, x_positive = self.source.pairs(self.step)
        batch = x.shape[0]
        h = self._encode(torch.cat([x, x_positive]))  # one pass over both views: [2B, d]
        if not self.world.distributed:
            return self.exp.loss(h[:batch], h[batch:])
        if self.cfg.train.distributed_loss == "rows":
            positives = distributed.gather(h[batch:])
            return self.exp.loss(h[:batch], positives, offset=self.world.rank * batch)
        # replicated: every rank the loss of the whole batch (the same number on every rank),
        # anchors and positives in rank order, as one process with shards draws them
        both = distributed.gather_replicated(h).unflatten(0, (self.world.size, 2, batch))
        return self.exp.loss(both[:, 0].flatten(0, 1), both[:, 1].flatten(0, 1))

    def supervised_loss(self) -> Tensor:
        """The supervised baseline: mean squared error of f(x) against the latents (the ceiling)."""
        x, z = self.source.labelled(self.step)
        h = self._encode(x)
        # more outputs than latents (KITTI: 10 outputs, 3 factors): the first k are regressed,
        # the others are free (the affine R² of all of them is at least that of the first k);
        # fewer outputs than latents is refused when the experiment is built
        return torch.nn.functional.mse_loss(h[:, : z.shape[1]], z)

    def slowvae_loss(self) -> Tensor:
        """SlowVAE's negative ELBO on batch ``self.step`` of pairs (the baseline of KITTI Masks).

        Its sampling noise is a function of (seed, step), like the batch: a resumed run continues
        exactly."""
        x, x_positive = self.source.pairs(self.step)
        if self.shards.count == 1:
            gen = torch.Generator(self.device)
            gen.manual_seed(batch_seed(self.cfg.train.seed, STREAM_NOISE, self.step))
            return self.exp.model.loss(x, x_positive, generator=gen)
        # one noise stream per shard, as for the pairs: [2 rows, d] per shard, anchors' rows first
        size, width = self.shards.size, self.exp.model.latent_dim
        gens = self.shards.generators(self.cfg.train.seed, STREAM_NOISE, self.step, self.device)
        parts = [torch.randn((2 * size, width), generator=g, device=self.device) for g in gens]
        noise = torch.cat([n[:size] for n in parts] + [n[size:] for n in parts])
        return self.exp.model.loss(x, x_positive, noise=noise.to(x.dtype))

    def evaluate(self, split: str = "eval") -> dict[str, Any]:
        """Scores of the current encoder on the source's ``split`` set (never a training batch)."""
        h = self.source.encode(self.eval_model, split)
        if not torch.isfinite(h).all():
            raise RunFailed(f"non-finite encoder output at step {self.step}")
        return self.source.score(h, split)

    # ----- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (tensors and plain containers only)."""
        return {
            "step": self.step,
            "wall_seconds": self.wall_seconds,
            "metrics_rows": len(self.rows),
            "config": self.cfg.to_dict(),
            "model": self.exp.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "source": self.source.state_dict(),
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "torch_version": str(torch.__version__),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint; returns the number of metrics rows it covers."""
        self.exp.model.load_state_dict(state["model"])
        if self.ema is not None:
            if "ema" not in state:
                raise ConfigError(
                    "train.ema: the checkpoint has no weight average (it was written without "
                    "train.ema); resume with the run's own config"
                )
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        # Checkpoints written before the pair-source seam kept the synthetic stream at the top.
        source_state = state.get("source")
        if source_state is None and "generator" in state:
            source_state = {"generator": state["generator"], "next": self.step}
        self.source.load_state_dict(source_state or {})
        self.wall_seconds = float(state["wall_seconds"])
        self.loss_sum.fill_(float(state.get("loss_sum", 0.0)))
        self.loss_count = int(state.get("loss_count", 0))
        self.last_checkpoint = self.step
        return int(state["metrics_rows"])

    def init_weights(self, source: str | Path) -> None:
        """Load the model weights of a run directory or checkpoint file (``train.init_from``).

        Raises:
            ConfigError: one line when the file is missing or unusable, or its weights do not
                fit this run's model (a key or a shape differs).
        """
        path = Path(source)
        file = path / CHECKPOINT if path.is_dir() else path
        state = load_checkpoint(file, what="train.init_from")
        if "model" not in state:
            raise ConfigError(f"train.init_from: {file} holds no model weights")
        weights = trained_weights(state)
        own = self.exp.model.state_dict()
        missing = [k for k in own if k not in weights]
        extra = [k for k in weights if k not in own]
        shape = [k for k in own if k in weights and own[k].shape != weights[k].shape]
        if missing or extra or shape:
            first = (missing or extra or shape)[0]
            raise ConfigError(
                f"train.init_from: {file} does not fit this run's model ({len(missing)} missing, "
                f"{len(extra)} unexpected, {len(shape)} of another shape, e.g. {first!r}); it "
                "must come from a run with the same model.encoder, output and output_dim"
            )
        self.exp.model.load_state_dict(weights)
        if self.ema is not None:  # the average starts from the loaded weights
            self.ema = WeightEMA(self.exp.model, self.cfg.train.ema)
        self.initialised = True

    def _checkpoint(self) -> None:
        # A callback that writes the state (RunDirectory) records ``last_checkpoint``; in memory
        # nothing is written, so the guard's message does not claim a checkpoint.
        for cb in self.callbacks:
            cb.on_checkpoint(self)

    def _guard(self, first_bad: Tensor) -> None:
        """Raise :class:`RunFailed` if a step since the last check had a non-finite loss or gradient.

        The parameters after that step are not trusted: no checkpoint is written over the last good
        one, and the run is marked failed."""
        step, code = (int(v) for v in first_bad.tolist())
        if code == 0:
            return
        what = "loss" if code == BAD_LOSS else "gradient"
        kept = (
            f"{CHECKPOINT} from step {self.last_checkpoint} kept"
            if self.last_checkpoint
            else "no checkpoint had been written"
        )
        raise RunFailed(
            f"non-finite {what} at step {step} (try a lower train.lr or a larger model.tau); {kept}"
        )

    # ----- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (continuing from the run directory's checkpoint when ``resume``)
        and return the result (what ``result.json`` holds).

        With ``stop_at`` below ``train.steps``, training pauses after that step: a checkpoint is
        written and the result has status ``"stopped"`` (no test evaluation). The learning-rate
        schedule still spans ``train.steps``, so resuming ends exactly like an uninterrupted run.
        """
        try:
            return self._run(resume, stop_at)
        finally:
            self.source.close()
            for cb in self.callbacks:
                cb.on_close(self)

    def _distribute(self, resume: bool) -> None:
        """A distributed run: every rank takes rank 0's state (on resume, what rank 0 read from
        the checkpoint; else identical already) and trains through DistributedDataParallel."""
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if resume:
            state = [_to_cpu(self.state_dict()) if self.world.is_main else None]
            dist.broadcast_object_list(state, src=0)
            if not self.world.is_main:
                self.load_state_dict(state[0])
        if self.device.type == "cuda":
            # batch statistics over the global batch (on the CPU they stay per rank)
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.exp.model)
        # buffers (the input normalisation) are equal on every rank by construction: synced at
        # the start, not before every forward (the keyword was renamed in torch 2.13)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        self.objective = DistributedDataParallel(
            self.objective,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            # given explicitly, the cap applies to the first bucket too (by default that one is
            # 1 MiB): the paper's MLP (1.4 MB of gradients) goes in one all-reduce, not two
            bucket_cap_mb=DDP_BUCKET_MB,
            gradient_as_bucket_view=True,  # the gradients live in the buckets: no copy back
            **{sync: False},
        )

    def _run(self, resume: bool, stop_at: int | None) -> dict[str, Any]:
        cfg = self.cfg
        end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
        if not resume and cfg.train.init_from is not None and not self.initialised:
            self.init_weights(cfg.train.init_from)  # before the callbacks write anything
        for cb in self.callbacks:
            cb.on_start(self, resume)  # on resume, the checkpoint is loaded here
        if stop_at is not None and stop_at <= self.step:
            raise ConfigError(
                f"--stop-at: must be above the step training starts from ({self.step}), "
                f"got {stop_at}"
            )
        if self.world.distributed:
            self._distribute(resume)
        main = self.world.is_main
        identity = self.source.baseline() if main else {}
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
        try:
            if self.step == 0 and not self.rows and main:
                self._log_eval(None, bar)
            while self.step < end:
                loss, bad = self.train_step()
                self.step += 1
                fresh = (first_bad[1] == 0) & (bad != 0)
                first_bad = torch.where(fresh, torch.stack([bad * 0 + self.step, bad]), first_bad)
                self.loss_sum += loss
                self.loss_count += 1
                bar.update(1)
                for cb in self.callbacks:
                    cb.on_step(self)
                self.wall_seconds = base_wall + time.perf_counter() - started
                do_eval = self.step % cfg.eval.every == 0 or self.step == cfg.train.steps
                do_ckpt = self.step % cfg.train.checkpoint_every == 0
                if do_eval or do_ckpt or self.step % guard_every == 0:
                    self._guard(first_bad)
                if do_eval:
                    if main:  # once, not once per rank
                        self._log_eval(float(self.loss_sum) / self.loss_count, bar)
                    self.loss_sum.zero_()
                    self.loss_count = 0
                if do_ckpt and main:
                    self._checkpoint()
            if self.step < cfg.train.steps:
                self._guard(first_bad)  # no checkpoint over a bad step
                status = "stopped"
        except RunFailed as exc:
            status, error = "failed", str(exc)
        finally:
            bar.close()
        if not main:
            return {"status": status, "rank": self.world.rank, "steps": self.step}
        if status in ("finished", "stopped"):
            self._checkpoint()
        result = self._result(status, error, identity)
        for cb in self.callbacks:
            cb.on_end(self, result)
        return result

    def _log_eval(self, loss: float | None, bar: Any) -> dict[str, Any]:
        scores = self.evaluate("eval")
        row = {
            "step": self.step,
            "loss": loss,
            "r2": scores["r2"],
            "mcc": scores["mcc"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "wall_seconds": round(self.wall_seconds, 3),
        }
        head = getattr(self.eval_model, "head", None)
        if hasattr(head, "log_radius"):
            row["radius"] = float(head.log_radius.exp())
        self.rows.append(row)
        for cb in self.callbacks:
            cb.on_eval(self, row, scores)
        shown = {"loss": "-" if loss is None else f"{loss:.4f}"}
        for key in ("r2", "mcc"):
            if row[key] is not None:
                shown[key] = f"{row[key]:.3f}"
        bar.set_postfix(shown)
        return row

    def _result(self, status: str, error: str | None, identity: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"status": status}
        if error:
            result["error"] = error
        if status == "stopped":
            result["of_steps"] = self.cfg.train.steps
        if status == "finished":
            final = self.evaluate("test")
            final["loss"] = self.rows[-1]["loss"] if self.rows else None
            result["final"] = final
        fields = self.source.result_fields()
        result.update(
            {
                "identity": identity,
                "steps": self.step,
                "wall_seconds": round(self.wall_seconds, 3),
                "seed": self.cfg.train.seed,
                "name": self.cfg.name,
                "device": str(self.device),
                "processes": self.world.size,
                "mixing": fields.pop("mixing", None),
                "eval_samples": fields.pop("eval_samples", None),
                "versions": {
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "threads": torch.get_num_threads(),
                    **provenance(),
                },
                **fields,
                "config": self.cfg.to_dict(),
            }
        )
        return result


def with_shards(cfg: RunConfig, processes: int) -> RunConfig:
    """``cfg`` with ``train.shards`` resolved for a fresh run of ``processes`` processes (one
    shard per process when unset; a single process keeps None: the batches of earlier versions).
    The run's config.yaml records the value, so that ``--resume`` draws the same batches."""
    if processes == 1 or cfg.train.shards is not None:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"shards": processes})})


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (to send a state between ranks)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    force: bool = False,
    callbacks: Iterable[Callback] = (),
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out_dir`` from scratch and return the result
    (pausing after step ``stop_at`` if given, see :meth:`Trainer.run`).

    Raises:
        ConfigError: ``out_dir`` holds a finished run (without ``force``), or the source's files
            are missing; nothing is written then.
    """
    out = Path(out_dir)
    if stop_at is not None and stop_at < 1:
        raise ConfigError(f"--stop-at: must be >= 1, got {stop_at}")
    check_run_dir(out, force)
    check_data_dirs(cfg)
    cfg = with_shards(cfg, distributed.world().size)
    trainer = Trainer(cfg, out, progress, callbacks=callbacks)
    if cfg.train.init_from is not None:  # refused before the run directory is written
        trainer.init_weights(cfg.train.init_from)
    if force and trainer.world.is_main:
        for name in ("result.json", CHECKPOINT, "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
    return trainer.run(stop_at=stop_at)


def resume(
    out_dir: str | Path,
    *,
    steps: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its checkpoint (to ``steps`` if given; pausing after
    step ``stop_at`` if given, see :meth:`Trainer.run`)."""
    out = Path(out_dir)
    data = read_run_config(out)
    if steps is not None:
        data.setdefault("train", {})["steps"] = steps
    cfg = validate_config(data)
    return Trainer(cfg, out, progress, callbacks=callbacks).run(resume=True, stop_at=stop_at)
