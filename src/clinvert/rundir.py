"""The run directory: the contract between training, sweeps, reports and users.

::

    DIR/config.yaml      the full resolved config
    DIR/metrics.jsonl    one JSON object per evaluation (step, loss, r2, mcc, lr, wall_seconds, ...;
                         r2_per_factor where the source names its factors)
    DIR/result.json      final scores, identity baseline, seed, steps, wall time, the resolved
                         config, the clinvert version and git commit (absent while a run is
                         paused with ``--stop-at``: the checkpoint holds its state)
    DIR/checkpoint.pt    model, optimiser, scheduler, source state (RNG), step (written atomically)
    DIR/r2_per_factor.png   runs whose source names its factors (3DIdent)
    DIR/tensorboard/     event files, with ``log.tensorboard: true``

:class:`RunDirectory` is the one component that writes it (a trainer callback); reading it back is
:func:`load_checkpoint` and :func:`clinvert.config.read_run_config`. Checkpoints are read with
``torch.load(weights_only=True)``: a file that holds anything but tensors and plain containers is
refused with one line, never executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.torch_version import TorchVersion

from clinvert.callbacks import Callback, TensorBoardLogger
from clinvert.errors import ConfigError
from clinvert.io import read_jsonl, save_torch, write_json, write_png, write_text

if TYPE_CHECKING:
    from clinvert.config import RunConfig
    from clinvert.train import Trainer

CHECKPOINT = "checkpoint.pt"


def resumable(path: str | Path) -> bool:
    """Whether the run directory ``path`` holds what ``--resume`` continues from: a checkpoint and
    the resolved config it was written under (a run killed before its first checkpoint has none)."""
    return (Path(path) / CHECKPOINT).is_file() and (Path(path) / "config.yaml").is_file()


def load_checkpoint(path: str | Path, map_location: Any = "cpu", what: str = "checkpoint") -> dict:
    """A checkpoint (or saved estimator) read safely: tensors, numbers, strings and containers only.

    Raises:
        ConfigError: one line naming the file when it is missing, unreadable, or holds anything
            else (a pickled object would run code on loading: it is refused, not executed).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: file not found, got {str(path)!r}")
    try:
        # TorchVersion (a str) is allowed: checkpoints written before 0.2 stored torch.__version__.
        with torch.serialization.safe_globals([TorchVersion]):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unusable file is the same error to a user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            first = "it holds objects other than tensors and plain containers; refused unread"
        raise ConfigError(f"{what}: {path} is not a usable {what} ({first[:160]})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{what}: {path} holds a {type(state).__name__}, not a {what} dictionary")
    return state


def trained_weights(state: dict) -> dict:
    """The model state a checkpoint's user should evaluate: the moving average of the weights when
    the run had ``train.ema``, else the trained weights."""
    ema = state.get("ema")
    return ema["model"] if ema else state["model"]


def check_run_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite a finished run unless ``force``; refuse a path that is a file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    if (out / "result.json").exists() and not force:
        raise ConfigError(
            f"--out: {out} already holds a finished run (result.json); use --force to overwrite "
            "or --resume to continue"
        )


def plot_r2_per_factor(path: Path, r2_per_factor: dict[str, float], title: str) -> None:
    """Bar chart of per-factor R^2, written atomically as PNG."""
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
    write_png(path, fig)


class RunDirectory(Callback):
    """Writes (and on resume reads back) a run directory; see the module docstring.

    Args:
        path: the run directory (created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_start(self, trainer: Trainer, resume: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        if resume:
            rows = read_jsonl(self.path / "metrics.jsonl")[: self._restore(trainer)]
        trainer.rows = rows
        write_text(self.path / "config.yaml", trainer.cfg.to_yaml())
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def _restore(self, trainer: Trainer) -> int:
        """Load the checkpoint into ``trainer``; returns the number of metrics rows it covers."""
        path = self.path / CHECKPOINT
        if not path.exists():
            return 0
        state = load_checkpoint(path, trainer.device)
        try:
            rows = trainer.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any mismatch is the same error to a user
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"--resume: {path} is not a usable checkpoint of this run ({reason}); "
                "delete it to restart the run, or train into a new --out"
            ) from None
        logged = len(read_jsonl(self.path / "metrics.jsonl"))
        if logged < rows:
            raise ConfigError(
                f"--resume: {self.path / 'metrics.jsonl'} holds {logged} complete rows but the "
                f"checkpoint (step {trainer.step}) expects {rows}; the run directory was modified"
            )
        return rows

    def on_eval(self, trainer: Trainer, row: dict[str, Any], scores: dict[str, Any]) -> None:
        # per-factor R² at every evaluation too (3DIdent): the curves of each factor over training
        per_factor = scores.get("r2_per_factor")
        line = {**row, "r2_per_factor": per_factor} if per_factor else row
        with open(self.path / "metrics.jsonl", "a") as log:
            log.write(json.dumps(line) + "\n")
            log.flush()

    def on_checkpoint(self, trainer: Trainer) -> None:
        save_torch(self.path / CHECKPOINT, trainer.state_dict())
        trainer.last_checkpoint = trainer.step

    def on_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        if result["status"] == "stopped":
            # paused with --stop-at: the checkpoint is the state; an older result.json (a run
            # resumed to more steps) no longer describes it
            (self.path / "result.json").unlink(missing_ok=True)
            return
        write_json(self.path / "result.json", result)
        per_factor = (result.get("final") or {}).get("r2_per_factor")
        if per_factor:
            title = f"{trainer.cfg.name or 'run'}: R² per factor at step {trainer.step}"
            plot_r2_per_factor(self.path / "r2_per_factor.png", per_factor, title)


def run_callbacks(cfg: RunConfig, out: str | Path) -> list[Callback]:
    """The callbacks of a run written to ``out``: the directory, and the loggers ``cfg.log`` asks for."""
    callbacks: list[Callback] = [RunDirectory(out)]
    if cfg.log.tensorboard:
        callbacks.append(TensorBoardLogger(Path(out) / "tensorboard"))
    return callbacks
