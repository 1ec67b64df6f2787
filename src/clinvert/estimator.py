"""A scikit-learn estimator for your own data: ``ContrastiveEncoder(...).fit(X, X_positive)``.

The estimator trains in memory with the same engine as ``clinvert train`` (the pair-source seam,
the same InfoNCE and fused kernels, the same progress bar) on an ``arrays`` pair source, and follows
scikit-learn's conventions: every hyper-parameter is a constructor argument (``get_params``,
``set_params`` and ``clone`` work), ``fit`` returns the estimator, ``transform`` returns a numpy
array, so it works inside a :class:`sklearn.pipeline.Pipeline`.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.uniform(size=(2000, 3))
    >>> z_pos = np.clip(z + rng.laplace(scale=0.05, size=z.shape), 0, 1)
    >>> mix = rng.normal(size=(3, 3))
    >>> enc = ContrastiveEncoder(output_dim=3, similarity="lp", p=1, output="box", steps=20,
    ...                          batch_size=256, verbose=False)
    >>> enc.fit(np.tanh(z @ mix), np.tanh(z_pos @ mix)).transform(np.tanh(z @ mix)).shape
    (2000, 3)

:func:`load` returns a fitted estimator from :meth:`ContrastiveEncoder.save`'s file or from any run
directory that ``clinvert train`` wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from clinvert import metrics
from clinvert.config import read_run_config, validate_config
from clinvert.data.arrays import ArraysSource, as_latents, as_observations
from clinvert.errors import ConfigError
from clinvert.experiment import build_experiment, init_model, resolve_device
from clinvert.io import save_torch
from clinvert.provenance import version
from clinvert.rundir import CHECKPOINT, load_checkpoint, trained_weights

#: Format tag of a saved estimator.
FORMAT = "clinvert-estimator/1"
#: Config fields -> the estimator's argument names, for error messages.
_FIELDS = {
    "model.output_dim": "output_dim",
    "latent.dim": "output_dim",
    "model.similarity": "similarity",
    "model.p": "p",
    "model.tau": "tau",
    "model.output": "output",
    "model.encoder": "encoder",
    "model.widths": "widths",
    "model.input_norm": "input_norm",
    "model.learnable_scale": "learnable_scale",
    "model.scale": "scale",
    "model.self_negative": "self_negative",
    "train.steps": "steps",
    "train.batch_size": "batch_size",
    "train.lr": "lr",
    "train.schedule": "schedule",
    "train.warmup_steps": "warmup_steps",
    "train.seed": "random_state",
    "train.device": "device",
    "train.ema": "ema",
    "data.max_delta_t": "max_delta_t",
}
#: Rows per forward pass in :meth:`ContrastiveEncoder.transform` (vectors / images).
TRANSFORM_CHUNK = {"vector": 16384, "image": 256}


def _argument_error(exc: ConfigError) -> ConfigError:
    """A config error re-worded with the estimator's argument name."""
    text = str(exc)
    for field, name in _FIELDS.items():
        if text.startswith(field + ":"):
            return ConfigError(name + text[len(field) :])
    return exc


@contextlib.contextmanager
def _flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero while training (see :func:`clinvert.runtime.configure_process`);
    restored afterwards, as this runs inside a user's process."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


class ContrastiveEncoder(TransformerMixin, BaseEstimator):
    """An encoder f trained with InfoNCE on positive pairs, such that f(x) recovers the latents
    that generated x up to the simple map the theory predicts (Zimmermann et al., ICML 2021).

    Args:
        output_dim: outputs of f (the number of latents you expect).
        similarity: ``"cosine"`` (with ``output="sphere"``: vMF-like conditionals) or ``"lp"``
            (s = -||a - b||_p^p: ``p=1`` Laplace-like, ``p=2`` Gaussian conditionals), or a name
            registered with :func:`clinvert.register_similarity`.
        p: exponent of the ``lp`` similarity.
        tau: temperature.
        output: ``"sphere"``, ``"box"`` (sigmoid times a bound) or ``"unbounded"``.
        encoder: ``"auto"`` (an MLP for [N, d] inputs, a small convolutional encoder for images
            [N, H, W] / [N, C, H, W]), ``"mlp"``, ``"conv"``, ``"resnet18"``, or a registered name.
        widths: hidden widths of the MLP as multiples of the input dimension.
        steps: optimisation steps (Adam; ``schedule="cosine"`` decays the learning rate to 0
            after ``warmup_steps`` of linear warm-up).
        batch_size: positive pairs per step.
        lr: Adam's learning rate.
        max_delta_t: for ``fit(X)`` on sequences, positives are 1..max_delta_t frames later.
        self_negative: count each anchor among its own negatives (None: yes for ``lp``, as the
            paper's code; no for ``cosine``).
        learnable_scale: learn the sphere radius / box bound / output scale (None: learn it for
            ``box`` and ``unbounded``, starting at ``tau ** (1 / p)``; fixed radius 1 on the sphere).
        scale: its initial (or fixed) value (None: see ``learnable_scale``).
        input_norm: ``"auto"`` (whitening of vectors, per-channel standardisation of images),
            ``"whiten"``, ``"standardize"`` or ``"none"``; fitted on the training observations.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        random_state: seed of the weights and of the batches (int; None draws one).
        verbose: show the progress bar.
        callbacks: :class:`clinvert.Callback` objects called during ``fit`` (loggers).
        ema: decay of a moving average of the weights (e.g. 0.999), which ``model_`` then holds
            (``train.ema``); None: the trained weights themselves.

    Attributes:
        model_: (after ``fit``) the trained ``torch.nn.Module`` (input norm, encoder, head).
        config_: the resolved run configuration (:class:`clinvert.config.RunConfig`).
        input_shape_: shape of one observation.
        history_: the evaluation rows of training (step, loss, and r2 / mcc when ``Z`` was given).
    """

    def __init__(
        self,
        output_dim: int = 10,
        similarity: str = "cosine",
        p: float = 2.0,
        tau: float = 0.1,
        output: str = "sphere",
        encoder: str = "auto",
        widths: Sequence[int] = (10, 50, 50, 10),
        steps: int = 5000,
        batch_size: int = 512,
        lr: float = 5e-3,
        schedule: str = "cosine",
        warmup_steps: int = 200,
        max_delta_t: int = 1,
        self_negative: bool | None = None,
        learnable_scale: bool | None = None,
        scale: float | None = None,
        input_norm: str = "auto",
        device: str = "auto",
        random_state: int | None = 0,
        verbose: bool = True,
        callbacks: Sequence[Any] | None = None,
        ema: float | None = None,
    ) -> None:
        self.output_dim = output_dim
        self.similarity = similarity
        self.p = p
        self.tau = tau
        self.output = output
        self.encoder = encoder
        self.widths = widths
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.max_delta_t = max_delta_t
        self.self_negative = self_negative
        self.learnable_scale = learnable_scale
        self.scale = scale
        self.input_norm = input_norm
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.ema = ema

    # ----- configuration -----------------------------------------------------------------------
    def _config(self, observations: str, eval_every: int) -> Any:
        """The run configuration of these hyper-parameters for observations of the given kind."""
        for name in ("tau", "p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name}: must be a number > 0, got {value!r}")
        encoder = self.encoder
        if encoder == "auto":
            encoder = "mlp" if observations == "vector" else "conv"
        input_norm = self.input_norm
        if input_norm == "auto":
            input_norm = "whiten" if observations == "vector" else "standardize"
        lp = self.similarity == "lp"
        learnable = self.learnable_scale
        if learnable is None:
            learnable = self.output in ("box", "unbounded")
        scale = self.scale
        if scale is None:
            p = float(self.p) if lp else 1.0
            scale = float(self.tau) ** (1.0 / p) if learnable and self.output != "sphere" else 1.0
        self_negative = self.self_negative if self.self_negative is not None else lp
        seed = self.random_state
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        data = {
            "name": "ContrastiveEncoder",
            "model": {
                "output_dim": self.output_dim,
                "encoder": encoder,
                "input_norm": input_norm,
                "widths": list(self.widths),
                "output": self.output,
                "learnable_scale": learnable,
                "scale": scale,
                "similarity": self.similarity,
                "p": self.p,
                "tau": self.tau,
                "self_negative": self_negative,
            },
            "train": {
                "batch_size": self.batch_size,
                "steps": self.steps,
                "lr": self.lr,
                "schedule": self.schedule,
                "warmup_steps": min(self.warmup_steps, self.steps),
                "seed": seed,
                "device": self.device,
                "checkpoint_every": max(1, self.steps),
                "ema": self.ema,
            },
            "eval": {"every": max(1, eval_every)},
            "data": {"source": "arrays", "max_delta_t": self.max_delta_t},
        }
        data = _plain(data)
        try:
            return validate_config(data)
        except ConfigError as exc:
            raise _argument_error(exc) from None

    # ----- fit / transform ---------------------------------------------------------------------
    def fit(self, X: Any, X_positive: Any = None, *, Z: Any = None) -> ContrastiveEncoder:  # noqa: N803
        """Train on positive pairs (``X``, ``X_positive``), or on sequences ``X`` alone.

        Args:
            X: observations [N, d] or images [N, H, W] / [N, C, H, W]; without ``X_positive``, one
                sequence [T, ...] in time order or a list of sequences.
            X_positive: [N, ...] like ``X``; row i is a positive partner of row i of ``X``.
            Z: optional ground-truth latents of ``X`` ([N, k]; for sequences, one array per
                sequence) to follow R² and MCC during training (``history_``). Never used for
                training itself.

        Raises:
            ConfigError (a ValueError): one line naming the argument (shape mismatch, NaN or
                infinite values, fewer pairs than ``batch_size``, 1-D input, a bad hyper-parameter).
        """
        if X is None:
            raise ConfigError("X: required, got None")
        first = X[0] if isinstance(X, list | tuple) and X_positive is None and len(X) else X
        probe = as_observations(first[:2] if hasattr(first, "__getitem__") else first, "X")
        observations = "vector" if probe.ndim == 2 else "image"
        eval_every = max(1, self.steps // 10) if Z is not None else max(1, self.steps)
        cfg = self._config(observations, eval_every)
        device = resolve_device(cfg.train.device)
        try:
            source = ArraysSource(
                cfg,
                device,
                x=list(X) if isinstance(X, tuple) else X,
                x_positive=X_positive,
                z=Z,
                names={"x": "X", "x_positive": "X_positive", "z": "Z"},
            )
        except ConfigError as exc:
            raise _argument_error(exc) from None
        from clinvert.train import Trainer

        with _flush_denormals():
            experiment = build_experiment(cfg, device, source)
            trainer = Trainer(experiment, None, self.verbose, callbacks=self.callbacks or ())
            result = trainer.run()
        if result["status"] != "finished":
            raise RuntimeError(f"ContrastiveEncoder.fit: {result.get('error')}")
        self.model_ = trainer.eval_model.eval()
        self.config_ = cfg
        self.input_shape_ = tuple(source.x.shape[1:])
        self.observations_ = observations
        self.history_ = trainer.rows
        if observations == "vector":
            self.n_features_in_ = int(self.input_shape_[0])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "this ContrastiveEncoder is not fitted yet; call fit(X, X_positive) or clinvert.load"
            )

    def _prepare(self, X: Any) -> torch.Tensor:  # noqa: N803
        """``X`` as float observations of the fitted shape (channels-last images are accepted)."""
        arr = X.detach().cpu().numpy() if hasattr(X, "detach") else np.asarray(X)
        shape = self.input_shape_
        if (
            self.observations_ == "image"
            and arr.ndim == 4
            and arr.shape[1] != shape[0]
            and arr.shape[-1] == shape[0]
        ):
            arr = np.moveaxis(arr, -1, 1)  # [N, H, W, C] -> [N, C, H, W]
        x = as_observations(arr, "X")
        if self.observations_ == "vector" and x.shape[1:] != shape:
            raise ConfigError(
                f"X: expected observations of shape {list(shape)}, got {list(x.shape[1:])}"
            )
        if self.observations_ == "image" and x.shape[1] != shape[0]:
            raise ConfigError(
                f"X: expected images with {shape[0]} channel(s) [N, {shape[0]}, H, W], got "
                f"shape {list(x.shape)}"
            )
        return torch.from_numpy(x)

    @torch.no_grad()
    def transform(self, X: Any) -> np.ndarray:  # noqa: N803
        """The codes f(X): float32 [N, output_dim]."""
        self._check_fitted()
        x = self._prepare(X)
        device = next(self.model_.parameters()).device
        chunk = TRANSFORM_CHUNK[self.observations_]
        self.model_.eval()
        out = [self.model_(x[i : i + chunk].to(device)).cpu() for i in range(0, len(x), chunk)]
        if not out:
            width = self.config_.model.output_dim or self.config_.latent.dim
            return np.zeros((0, width), dtype=np.float32)
        return torch.cat(out).numpy()

    def score(self, X: Any, Z: Any) -> float:  # noqa: N803
        """Held-out affine R² of the latents ``Z`` [N, k] from the codes of ``X`` (the paper's
        metric: fit Z ~ A f(X) + b on one half, score on the other). MCC: :func:`clinvert.metrics.mcc`.
        """
        h = self.transform(X)
        return metrics.r2(as_latents(Z, len(h), "Z"), h)

    # ----- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted estimator to ``path`` (atomically; tensors and plain values only, so
        :func:`load` reads it with ``weights_only=True``)."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params().items() if k != "callbacks"}
        state = {
            "format": FORMAT,
            "clinvert": version(),
            "params": _plain(params),
            "config": self.config_.to_dict(),
            "input_shape": list(self.input_shape_),
            "observations": self.observations_,
            "model": {k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
        }
        path = Path(path)
        save_torch(path, state)
        return path

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")


def _plain(obj: Any) -> Any:
    """Tuples -> lists and numpy scalars -> Python numbers, so configs and saved files are plain."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _restore(estimator: ContrastiveEncoder, cfg: Any, model_state: dict, shape, kind, device):
    in_dim = int(shape[0]) if shape else int(model_state["input_norm.mean"].shape[0])
    model = init_model(cfg, device, in_dim)
    model.load_state_dict(model_state)
    estimator.model_ = model.eval()
    estimator.config_ = cfg
    estimator.observations_ = kind
    estimator.input_shape_ = tuple(shape) if shape else (in_dim,)
    estimator.history_ = []
    if kind == "vector":
        estimator.n_features_in_ = in_dim
    return estimator


def load(path: str | Path, device: str = "cpu") -> ContrastiveEncoder:
    """A fitted :class:`ContrastiveEncoder` from a saved estimator file or a run directory.

    Args:
        path: a file written by :meth:`ContrastiveEncoder.save`, or a directory that
            ``clinvert train`` wrote (``config.yaml`` + ``checkpoint.pt``; synthetic, 3DIdent or
            arrays runs). Its ``transform`` then encodes observations of that run: g(z) vectors of
            a synthetic run, images of a 3DIdent run ([N, 3, H, W] floats in [0, 1], or the
            dataset's uint8 [N, H, W, 3]).
        device: where the model lives.

    Raises:
        ConfigError: one line when the path is neither, or the file holds anything but tensors and
            plain values (it is refused, not executed).
    """
    path = Path(path)
    dev = torch.device(device)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(
                f"load: {path} is a directory without config.yaml (not a run directory)"
            )
        cfg = validate_config(read_run_config(path))
        state = load_checkpoint(path / CHECKPOINT, dev)
        if "model" not in state:
            raise ConfigError(f"load: {path / CHECKPOINT} holds no model state")
        from clinvert.registry import ENCODERS

        kind = ENCODERS.get(cfg.model.encoder).inputs
        estimator = ContrastiveEncoder(**_params_of(cfg))
        shape = [3] if cfg.data.source == "threedident" else None
        if cfg.data.source == "synthetic":
            shape = [cfg.latent.dim]
        restored = _restore(estimator, cfg, trained_weights(state), shape, kind, dev)
        restored.run_dir_ = path
        return restored
    state = load_checkpoint(path, dev, what="estimator")
    if state.get("format") != FORMAT:
        raise ConfigError(
            f"load: {path} is not a saved ContrastiveEncoder (format {state.get('format')!r}, "
            f"expected {FORMAT!r}) nor a run directory"
        )
    cfg = validate_config(state["config"])
    estimator = ContrastiveEncoder(**state["params"])
    kind = state["observations"]
    shape = state["input_shape"] if kind == "vector" else state["input_shape"][:1]
    restored = _restore(estimator, cfg, state["model"], shape, kind, dev)
    restored.input_shape_ = tuple(state["input_shape"])
    return restored


def _params_of(cfg: Any) -> dict[str, Any]:
    """Estimator arguments that describe a run directory's config."""
    m, t = cfg.model, cfg.train
    return {
        "output_dim": m.output_dim or cfg.latent.dim,
        "similarity": m.similarity,
        "p": m.p,
        "tau": m.tau,
        "output": m.output,
        "encoder": m.encoder,
        "widths": tuple(m.widths),
        "steps": t.steps,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "schedule": t.schedule,
        "warmup_steps": t.warmup_steps,
        "self_negative": m.self_negative,
        "learnable_scale": m.learnable_scale,
        "scale": m.scale,
        "input_norm": m.input_norm,
        "random_state": t.seed,
        "max_delta_t": getattr(cfg.data, "max_delta_t", 1),
        "ema": t.ema,
    }
