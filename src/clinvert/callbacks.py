"""Hooks into the training loop: loggers and anything else that watches a run.

A callback overrides any of the hooks of :class:`Callback`; the trainer calls them in order. The run
directory itself (:class:`clinvert.rundir.RunDirectory`) is one, and so are the loggers here. A
user's own logger (W&B, MLflow, a database) is a subclass with an ``on_eval``::

    class PrintLogger(Callback):
        def on_eval(self, trainer, row, scores):
            print(row["step"], row["loss"], row["r2"])

    clinvert.train.train(cfg, "runs/x", callbacks=[PrintLogger()])
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinvert.errors import ConfigError

if TYPE_CHECKING:
    from clinvert.train import Trainer


class Callback:
    """Hooks of the training loop (each a no-op here).

    * ``on_start(trainer, resume)``: before the first step (after a checkpoint was restored);
    * ``on_eval(trainer, row, scores)``: after each evaluation; ``row`` is the ``metrics.jsonl`` line
      (step, loss, r2, mcc, lr, wall_seconds, ...), ``scores`` the source's full scores (per-factor
      ones included);
    * ``on_step(trainer)``: after every training step (``trainer.step`` counts it);
    * ``on_checkpoint(trainer)``: when the trainer's state should be saved;
    * ``on_end(trainer, result)``: with the ``result.json`` content, after training ended (finished
      or failed);
    * ``on_close(trainer)``: always last, also when training was interrupted by an exception.
    """

    def on_start(self, trainer: Trainer, resume: bool) -> None:
        """Before the first step."""

    def on_eval(self, trainer: Trainer, row: dict[str, Any], scores: dict[str, Any]) -> None:
        """After an evaluation."""

    def on_step(self, trainer: Trainer) -> None:
        """After each training step (it runs every step: keep it cheap)."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """When the state should be saved."""

    def on_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        """After training, with the result."""

    def on_close(self, trainer: Trainer) -> None:
        """Always last."""


def _scalars(row: dict[str, Any], scores: dict[str, Any]) -> dict[str, float]:
    """Flat name -> number view of an evaluation for loggers: the row, then per-factor scores."""
    out = {k: float(v) for k, v in row.items() if k not in ("step", "wall_seconds") and _number(v)}
    for key in ("r2_per_factor", "mcc_per_factor", "knn_r2_per_factor"):
        for factor, value in (scores.get(key) or {}).items():
            if _number(value):
                out[f"{key}/{factor}"] = float(value)
    if "r2_per_factor" not in scores:
        for i, value in enumerate(scores.get("r2_per_dim") or []):
            out[f"r2_per_dim/{i}"] = float(value)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


class TensorBoardLogger(Callback):
    """TensorBoard event files: loss, learning rate, R², MCC and per-factor scores at every
    evaluation, the final and identity scores at the end (``log.tensorboard: true`` in a config
    writes them to ``DIR/tensorboard``). Needs ``pip install 'clinvert[tensorboard]'``.

    Args:
        log_dir: the directory of the event files.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log.tensorboard: needs the tensorboard package; "
                "pip install 'clinvert[tensorboard]' (or set log.tensorboard: false)"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer_cls = SummaryWriter
        self.writer: Any = None

    def on_start(self, trainer: Trainer, resume: bool) -> None:
        # purge_step drops events a killed run logged after its last checkpoint
        self.writer = self._writer_cls(str(self.log_dir), purge_step=trainer.step or None)

    def on_eval(self, trainer: Trainer, row: dict[str, Any], scores: dict[str, Any]) -> None:
        for name, value in _scalars(row, scores).items():
            self.writer.add_scalar(name, value, row["step"])
        self.writer.flush()

    def on_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        for part in ("final", "identity"):
            for name in ("r2", "mcc"):
                value = (result.get(part) or {}).get(name)
                if _number(value):
                    self.writer.add_scalar(f"{part}/{name}", float(value), trainer.step)

    def on_close(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CSVLogger(Callback):
    """One CSV line per evaluation (step, loss, r2, mcc, lr, wall_seconds), appended to ``path``."""

    FIELDS = ("step", "loss", "r2", "mcc", "lr", "wall_seconds")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_eval(self, trainer: Trainer, row: dict[str, Any], scores: dict[str, Any]) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
