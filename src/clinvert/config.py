"""Typed, validated run configuration: YAML in, one clear line out when something is wrong.

A run configuration has five sections (see README, "Config format"), and an optional sixth::

    latent:  dim, space, box, marginal{name, ...}, conditional{name, ...}
    mixing:  layers, seed, cond_quantile, cond_trials, weights
    model:   encoder, stem, widths, output, learnable_scale, scale, similarity, p, tau,
             self_negative
    train:   batch_size, steps, lr, optimizer, schedule, warmup_steps, seed, device, checkpoint_every
    eval:    every, samples, correlation
    data:    source (synthetic | threedident), train_dir, test_dir, workers

With ``data.source: threedident`` the observations are rendered images instead of g(z): the
``latent`` section still describes the latent process (a box [-1, 1]^10 with a uniform marginal and
the conditional of positive pairs, snapped to the nearest rendered image), ``mixing`` is unused, and
the encoder is ``resnet18``. A synthetic run's resolved config omits ``data`` and ``model.stem``, so
its ``config.yaml`` reads exactly as before the image path existed.

Every field is checked (types, ranges, names, and combinations such as ``vmf`` on a box) before any
work starts; :class:`ConfigError` names the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clinvert.models.mlp import PAPER_WIDTHS

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """Parse YAML text with the config loader."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A configuration value is invalid. ``str(err)`` is one line: field, value, what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ----- latent process --------------------------------------------------------------------------------
class UniformSpec(_Section):
    """Uniform marginal (sphere or box only)."""

    name: Literal["uniform"]


class NormalSpec(_Section):
    """Normal law with standard deviation ``scale``."""

    name: Literal["normal"]
    scale: PositiveFloat


class LaplaceSpec(_Section):
    """Laplace law with scale ``scale``."""

    name: Literal["laplace"]
    scale: PositiveFloat


class GennormSpec(_Section):
    """Generalised normal law, density proportional to exp(-|x / scale|^beta)."""

    name: Literal["gennorm"]
    beta: PositiveFloat
    scale: PositiveFloat


class VMFSpec(_Section):
    """von Mises-Fisher conditional with concentration ``kappa`` (sphere only)."""

    name: Literal["vmf"]
    kappa: PositiveFloat


MarginalSpec = Annotated[
    UniformSpec | NormalSpec | LaplaceSpec | GennormSpec, Field(discriminator="name")
]
ConditionalSpec = Annotated[
    VMFSpec | NormalSpec | LaplaceSpec | GennormSpec, Field(discriminator="name")
]
_TAGGED_FIELDS = {"marginal", "conditional"}
_TAGS = {"uniform", "normal", "laplace", "gennorm", "vmf"}


class LatentConfig(_Section):
    """The latent process: space, marginal and conditional."""

    dim: Annotated[int, Field(ge=1, le=4096)] = 10
    space: Literal["sphere", "box", "unbounded"] = "sphere"
    box: Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)] = [0.0, 1.0]
    marginal: MarginalSpec = UniformSpec(name="uniform")
    conditional: ConditionalSpec = VMFSpec(name="vmf", kappa=1.0)


class MixingConfig(_Section):
    """The invertible MLP g. ``seed: null`` uses the training seed.

    The defaults are the paper's rule: every layer the best-conditioned of 25000 draws with entries
    uniform in [-1, 1] (``cond_quantile: 0``); ``cond_quantile: q`` takes the first draw under the
    q-quantile instead.
    """

    layers: Annotated[int, Field(ge=1, le=64)] = 3
    seed: Annotated[int, Field(ge=0)] | None = None
    cond_quantile: Annotated[float, Field(ge=0, le=1)] = 0.0
    cond_trials: Annotated[int, Field(ge=1, le=100_000)] = 25000
    weights: Literal["uniform", "normal"] = "uniform"


class ModelConfig(_Section):
    """Encoder, output head and loss."""

    encoder: Literal["mlp", "resnet18"] = "mlp"
    stem: Literal["imagenet", "small"] = "imagenet"
    input_norm: Literal["none", "standardize", "whiten"] = "whiten"
    widths: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=0, max_length=64)] = list(
        PAPER_WIDTHS
    )
    negative_slope: Annotated[float, Field(ge=0, le=1)] = 0.2
    output: Literal["sphere", "box", "unbounded"] = "sphere"
    learnable_scale: bool = False
    scale: PositiveFloat = 1.0
    similarity: Literal["cosine", "lp"] = "cosine"
    p: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    tau: PositiveFloat = 1.0
    #: Count each anchor among its own negatives (exp(s(a, a) / tau) in the denominator), as the
    #: paper's code does; see :func:`clinvert.losses.info_nce`.
    self_negative: bool = False


class TrainConfig(_Section):
    """Optimisation. ``schedule: cosine`` decays the learning rate to 0 over ``steps``."""

    batch_size: Annotated[int, Field(ge=2, le=1_000_000)] = 6144
    steps: Annotated[int, Field(ge=0)] = 300_000
    lr: PositiveFloat = 1.0e-4
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    seed: Annotated[int, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: Annotated[int, Field(ge=1)] = 1000
    objective: Literal["contrastive", "supervised"] = "contrastive"


class EvalConfig(_Section):
    """Evaluation on fresh samples every ``every`` steps and at the end."""

    every: Annotated[int, Field(ge=1)] = 250
    samples: Annotated[int, Field(ge=8, le=10_000_000)] = 4096
    correlation: Literal["pearson", "spearman"] = "pearson"


class DataConfig(_Section):
    """Where observations come from: the synthetic mixing g(z), or rendered 3DIdent images.

    ``train_dir`` / ``test_dir`` are dataset directories (see :mod:`clinvert.data.images`), relative
    to the working directory; ``workers`` loader processes build the nearest-neighbour pairs.
    """

    source: Literal["synthetic", "threedident"] = "synthetic"
    train_dir: str | None = None
    test_dir: str | None = None
    workers: Annotated[int, Field(ge=0, le=64)] = 2


class Claim(_Section):
    """What the theory predicts for a run: ``metric`` at least and/or at most a value. Reports check
    every claim of a row and say plainly where a row falls short; training ignores claims."""

    metric: Literal["r2", "mcc"]
    at_least: Annotated[float, Field(ge=0, le=1)] | None = None
    at_most: Annotated[float, Field(ge=0, le=1)] | None = None

    def holds(self, value: float | None) -> bool | None:
        """Whether ``value`` satisfies the claim (None when there is no value)."""
        if value is None or value != value:
            return None
        low_ok = self.at_least is None or value >= self.at_least
        return low_ok and (self.at_most is None or value <= self.at_most)

    def describe(self) -> str:
        """'MCC ≥ 0.95'-style text."""
        name = {"r2": "R²", "mcc": "MCC"}[self.metric]
        parts = []
        if self.at_least is not None:
            parts.append(f"{name} ≥ {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"{name} ≤ {self.at_most:g}")
        return " and ".join(parts) or f"{name} (no bound)"


class RunConfig(_Section):
    """A whole run."""

    name: str | None = None
    matched: bool | None = None
    claims: Annotated[list[Claim], Field(max_length=8)] = []
    latent: LatentConfig = LatentConfig()
    mixing: MixingConfig = MixingConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    data: DataConfig = DataConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dictionary of the full resolved config.

        Synthetic runs leave out ``data`` and ``model.stem`` (neither applies to them), and every
        run leaves out ``model.self_negative`` while it is false, so resolved configs read as they
        did before those options existed and old run directories stay resumable.
        """
        out = self.model_dump(mode="json")
        if self.data.source == "synthetic" and self.data == DataConfig():
            del out["data"]
        if self.model.encoder == "mlp" and self.model.stem == "imagenet":
            del out["model"]["stem"]
        if not self.model.self_negative:
            del out["model"]["self_negative"]
        return out

    @property
    def is_image_run(self) -> bool:
        """Whether observations are images from a dataset on disk (not the synthetic mixing)."""
        return self.data.source != "synthetic"

    def to_yaml(self) -> str:
        """The full resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def mixing_seed(self) -> int:
        """Seed of the mixing weights (``mixing.seed``, or the training seed)."""
        return self.mixing.seed if self.mixing.seed is not None else self.train.seed


def _law(spec: Any) -> str:
    params = {k: v for k, v in spec.model_dump().items() if k != "name"}
    names = {
        "vmf": "vMF",
        "normal": "Normal",
        "laplace": "Laplace",
        "gennorm": "GenNorm",
        "uniform": "Uniform",
    }
    symbols = {
        "kappa": "κ",
        "beta": "β",
        "scale": {"normal": "σ", "laplace": "λ"}.get(spec.name, "s"),
    }
    inner = ", ".join(f"{symbols.get(k, k)}={v:g}" for k, v in params.items())
    return f"{names[spec.name]}({inner})" if inner else names[spec.name]


def describe_process(cfg: RunConfig) -> str:
    """'sphere / Uniform / vMF(κ=1)'-style label of the generative process."""
    lat = cfg.latent
    space = "R^n" if lat.space == "unbounded" else lat.space
    return f"{space} / {_law(lat.marginal)} / {_law(lat.conditional)}"


def describe_model(cfg: RunConfig) -> str:
    """'sphere, cosine, τ=1'-style label of the model."""
    m = cfg.model
    space = "R^n" if m.output == "unbounded" else m.output
    loss = "cosine" if m.similarity == "cosine" else f"L{m.p:g}"
    learn = " (learnable scale)" if m.learnable_scale else ""
    own = ", self-negative" if m.self_negative else ""
    return f"{space}{learn}, {loss}, τ={m.tau:g}{own}"


# ----- validation ------------------------------------------------------------------------------------
def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        # Discriminated unions insert the tag into the location: latent.conditional.vmf.kappa.
        if i > 0 and loc[i - 1] in _TAGGED_FIELDS and part in _TAGS and i < len(loc) - 1:
            continue
        parts.append(str(part))
    return ".".join(parts) or "<config>"


def _format_error(err: dict[str, Any]) -> str:
    field = _field_path(tuple(err.get("loc", ())))
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        return f"{field}: unknown key (check the spelling; see README 'Config format')"
    if err.get("type") == "missing":
        return f"{field}: required field is missing"
    ctx = err.get("ctx") or {}
    if err.get("type") == "union_tag_invalid":
        return f"{field}.name: unknown name {ctx.get('tag')!r}, allowed: {ctx.get('expected_tags')}"
    if err.get("type") == "union_tag_not_found":
        return f"{field}: needs a 'name' key, got {err.get('input')!r}"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"{field}: {msg[0].lower()}{msg[1:]}, got {shown}"


def _check_combinations(cfg: RunConfig) -> None:
    latent, model = cfg.latent, cfg.model
    if latent.space == "sphere" and latent.dim < 2:
        raise ConfigError(f"latent.dim: the sphere needs dim >= 2, got {latent.dim}")
    if latent.box[0] >= latent.box[1]:
        raise ConfigError(f"latent.box: must be [low, high] with low < high, got {latent.box}")
    if latent.conditional.name == "vmf" and latent.space != "sphere":
        raise ConfigError(
            f"latent.conditional.name: vmf is only defined on space sphere, got space={latent.space} "
            "(allowed there: normal, laplace, gennorm)"
        )
    if latent.marginal.name == "uniform" and latent.space == "unbounded":
        raise ConfigError(
            "latent.marginal.name: uniform needs a bounded space (sphere | box), got space=unbounded "
            "(allowed there: normal, laplace, gennorm)"
        )
    if model.similarity == "cosine" and model.output != "sphere":
        raise ConfigError(
            f"model.similarity: cosine needs model.output sphere (a.b is unbounded elsewhere), "
            f"got output={model.output} (use similarity lp)"
        )


def _check_images(cfg: RunConfig) -> None:
    """Combinations of an image run (``data.source: threedident``) and of the image encoder."""
    data, latent, model = cfg.data, cfg.latent, cfg.model
    if not cfg.is_image_run:
        if model.encoder != "mlp":
            raise ConfigError(
                f"model.encoder: {model.encoder} encodes images and needs data.source threedident, "
                "got source=synthetic (use encoder mlp)"
            )
        if model.stem != "imagenet":
            raise ConfigError(
                f"model.stem: applies to the resnet18 encoder only, got {model.stem!r} with "
                "encoder mlp (remove it)"
            )
        return
    for name in ("train_dir", "test_dir"):
        if not getattr(data, name):
            raise ConfigError(f"data.{name}: required for source {data.source}, got None")
    if model.encoder != "resnet18":
        raise ConfigError(
            f"model.encoder: source {data.source} needs an image encoder, got {model.encoder!r} "
            "(allowed: resnet18)"
        )
    if model.input_norm == "whiten":
        raise ConfigError(
            "model.input_norm: whiten applies to vector observations; for images use standardize "
            "(per-channel, fitted on training images) or none, got 'whiten'"
        )
    if latent.space != "box":
        raise ConfigError(
            f"latent.space: the 3DIdent latents live in a box, got {latent.space!r} (use box)"
        )
    if latent.marginal.name != "uniform":
        raise ConfigError(
            f"latent.marginal.name: pairs start from the dataset's uniform latents, got "
            f"{latent.marginal.name!r} (use uniform)"
        )
    if latent.conditional.name not in ("normal", "laplace", "gennorm"):
        raise ConfigError(
            f"latent.conditional.name: {latent.conditional.name} is not defined on a box "
            "(allowed: normal, laplace, gennorm)"
        )


def check_data_dirs(cfg: RunConfig) -> None:
    """Raise a one-line ConfigError naming the field when an image run's dataset dirs are missing.

    Called before any work starts (and before the run directory is created); the dataset content
    itself is checked by :func:`clinvert.data.images.load_image_dataset`.
    """
    if not cfg.is_image_run:
        return
    for name in ("train_dir", "test_dir"):
        path = Path(str(getattr(cfg.data, name)))
        if not path.is_dir():
            raise ConfigError(f"data.{name}: dataset directory not found, got {str(path)!r}")


def validate_config(data: Any) -> RunConfig:
    """Validate a nested dictionary into a :class:`RunConfig` or raise a one-line :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"<config>: must be a mapping of sections, got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
    _check_combinations(cfg)
    _check_images(cfg)
    return cfg


def apply_overrides(
    data: dict[str, Any], overrides: list[str], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a nested dictionary copy.

    A section that ``data`` lacks is first filled from ``defaults`` (the built-in defaults unless
    given), so ``latent.conditional.kappa=10`` works on an empty config.
    """
    out = copy.deepcopy(data) if data else {}
    defaults = RunConfig().to_dict() if defaults is None else defaults
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set: expected key.path=value, got {item!r}")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(f"--set: expected key.path=value, got {item!r}")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {path}: value is not valid YAML, got {raw!r}") from None
        node, default = out, defaults
        for key in keys[:-1]:
            default = default.get(key) if isinstance(default, dict) else None
            child = node.setdefault(
                key, copy.deepcopy(default) if isinstance(default, dict) else {}
            )
            if not isinstance(child, dict):
                raise ConfigError(f"--set {path}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file not found, got {str(path)!r}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping, got {type(data).__name__}")
    return data


#: What a run directory's config meant when it was written before ``mixing.weights`` existed: the
#: candidates of every mixing layer were Gaussian then.
LEGACY_MIXING_WEIGHTS = "normal"


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run directory was made from (``config.yaml``), as a dictionary.

    A config saved before ``mixing.weights`` existed gets ``weights: normal``, so that resuming or
    scoring such a run rebuilds the mixing it was trained with, not today's default.
    """
    data = read_yaml(Path(run_dir) / "config.yaml")
    mixing = data.get("mixing")
    if isinstance(mixing, dict) and "weights" not in mixing:
        mixing["weights"] = LEGACY_MIXING_WEIGHTS
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def select_profile(data: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Drop the ``profiles`` section of a config, merging in ``profiles[profile]`` when given.

    A profile holds the same sections as a config (typically ``train`` and ``eval``) and changes
    only how a run is executed: e.g. ``quick`` sizes a paper-scale row for a 2-core machine.
    """
    data = dict(data)
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"profiles: must be a mapping of name -> sections, got {profiles!r}")
    if profile is None:
        return data
    if profile not in profiles:
        defined = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"profile: unknown profile {profile!r}, defined in this config: {defined}"
        )
    if not isinstance(profiles[profile], dict):
        raise ConfigError(f"profiles.{profile}: must be a mapping of sections")
    return deep_merge(data, profiles[profile])


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
) -> RunConfig:
    """Load a YAML file (or the defaults when ``path`` is None), select a profile, apply overrides,
    validate."""
    data = read_yaml(path) if path is not None else {}
    data = select_profile(data, profile)
    return validate_config(apply_overrides(data, overrides or []))
