"""Typed, validated run configuration: YAML in, one clear line out when something is wrong.

A run configuration has these sections (see README, "Config format")::

    latent:  dim, space, box, marginal{name, ...}, conditional{name, ...}
    mixing:  layers, seed, cond_quantile, cond_trials, weights
    model:   encoder, stem, input_norm, widths, negative_slope, output, output_dim,
             learnable_scale, scale, similarity, p, tau, self_negative
    train:   batch_size, steps, lr, optimizer, schedule, warmup_steps, seed, device, checkpoint_every,
             objective
    eval:    every, samples, correlation
    data:    source, and the fields of that source (threedident: train_dir, test_dir, workers;
             arrays: x, x_positive, z, max_delta_t, test_x, test_z)
    log:     tensorboard
    plugins: modules that register components, imported before validation

The names a field accepts come from the registries of :mod:`clinvert.registry` (spaces, laws,
encoders, heads, similarities, sources), and the fields of a latent law or a pair source from the
section class it registered, so a component registered by a user's module is valid in YAML at once.
A source's own rules (3DIdent needs a box, a uniform marginal and a noise conditional) live with the
source (:meth:`clinvert.data.sources.PairSource.check_config`). A synthetic run's resolved config
omits ``data``, ``log``, ``plugins`` and unset newer fields, so its ``config.yaml`` reads exactly as
in earlier versions and old run directories stay resumable.

Every field is checked (types, ranges, names, and combinations such as ``vmf`` on a box) before any
work starts; :class:`ConfigError` names the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, SerializeAsAny, ValidationError

from clinvert.data.synthetic import SyntheticData
from clinvert.errors import ConfigError
from clinvert.latents.distributions import UniformSpec, VMFSpec
from clinvert.models.mlp import PAPER_WIDTHS
from clinvert.registry import (
    CONDITIONALS,
    ENCODERS,
    HEADS,
    MARGINALS,
    SIMILARITIES,
    SOURCES,
    SPACES,
    Registry,
    check_name,
)
from clinvert.spec import DataSpec, FiniteFloat, LawSpec, PositiveFloat
from clinvert.spec import Section as _Section

__all__ = ["ConfigError", "RunConfig", "load_config", "validate_config"]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names the same key twice (PyYAML alone would keep the last silently)."""

    def __init__(self, key: object, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(problem=f"key {key!r} is given twice", problem_mark=again)
        self.key = key
        self.first_line = first.line + 1
        self.line = again.line + 1


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does, and
    refuses a mapping that names a key twice (:class:`DuplicateKeyError`) instead of keeping
    the last one: a profile or section pasted twice must not pass unnoticed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor`` merges; explicit keys may override merged ones
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


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


def _registered(registry: Registry[Any]) -> AfterValidator:
    """A field validator: the value must be a name in ``registry`` (read at validation time, so
    components registered by a user's module are allowed)."""

    def check(value: str) -> str:
        return check_name(registry, value)

    return AfterValidator(check)


# ----- latent process --------------------------------------------------------------------------------
class LatentConfig(_Section):
    """The latent process: space, marginal and conditional."""

    dim: Annotated[int, Field(ge=1, le=4096)] = 10
    space: Annotated[str, _registered(SPACES)] = "sphere"
    box: Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)] = [0.0, 1.0]
    #: A registered marginal's section (``MARGINALS``), resolved by :func:`validate_config`.
    marginal: SerializeAsAny[LawSpec] = UniformSpec(name="uniform")
    #: A registered conditional's section (``CONDITIONALS``), resolved by :func:`validate_config`.
    conditional: SerializeAsAny[LawSpec] = VMFSpec(name="vmf", kappa=1.0)


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

    encoder: Annotated[str, _registered(ENCODERS)] = "mlp"
    stem: Literal["imagenet", "small"] = "imagenet"
    input_norm: Literal["none", "standardize", "whiten"] = "whiten"
    widths: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=0, max_length=64)] = list(
        PAPER_WIDTHS
    )
    negative_slope: Annotated[float, Field(ge=0, le=1)] = 0.2
    output: Annotated[str, _registered(HEADS)] = "sphere"
    learnable_scale: bool = False
    scale: PositiveFloat = 1.0
    similarity: Annotated[str, _registered(SIMILARITIES)] = "cosine"
    p: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    tau: PositiveFloat = 1.0
    #: Outputs of the encoder (None: ``latent.dim``, one per true latent).
    output_dim: Annotated[int, Field(ge=1, le=65536)] | None = None
    #: Count each anchor among its own negatives (exp(s(a, a) / tau) in the denominator), as the
    #: paper's code does; see :func:`clinvert.losses.info_nce`.
    self_negative: bool = False
    #: Memory format of an image model's weights (and so of its activations): ``channels_last``
    #: is 1.27x faster per step for the ``conv`` encoder on 1-channel 64x64 masks on this
    #: machine's CPU (benchmarks/README.md); it changes float rounding, not the arithmetic.
    #: Vector encoders (``mlp``) ignore it.
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"


class SlowVAEConfig(_Section):
    """SlowVAE's weights (``train.objective: slowvae``): ``beta`` on KL(q(z0|x0) || N(0, I)),
    ``gamma`` on the Laplace transition prior's KL, ``rate`` of that Laplace (1 / scale)."""

    beta: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    gamma: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0
    rate: PositiveFloat = 6.0


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
    #: ``contrastive`` (InfoNCE), ``supervised`` (regression on the latents: the ceiling) or
    #: ``slowvae`` (the SlowVAE baseline on the same pairs; image sources, ``train.slowvae``)
    objective: Literal["contrastive", "supervised", "slowvae"] = "contrastive"
    slowvae: SlowVAEConfig = SlowVAEConfig()
    #: Shards of every global batch, each drawn from its own stream of (seed, step, shard)
    #: (:class:`clinvert.data.sources.Shards`). None: one per process, set when a run starts
    #: (so 1 in a single process: the batches of earlier versions); a distributed run records
    #: its value in config.yaml, and one process with ``shards: N`` draws exactly the batches
    #: of an N-process run.
    shards: Annotated[int, Field(ge=1, le=65536)] | None = None
    #: Arithmetic of the encoder's forward and backward: ``fp32``; ``tf32`` (CUDA matmuls and
    #: convolutions in TensorFloat-32); ``bf16`` (autocast to bfloat16 where torch deems it safe;
    #: the loss's similarities and log-sum-exp stay in float32).
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    #: How a distributed run computes InfoNCE over the global batch (both equal the single-process
    #: loss): ``replicated``, every rank the whole batch's loss from the gathered embeddings (one
    #: all-gather per step, no collective in the backward; the B x B loss on every rank), or
    #: ``rows``, each rank its own anchors' rows against all positives (B x B / N per rank, and an
    #: all-reduce of the positives' gradients in the backward). No effect in one process.
    distributed_loss: Literal["replicated", "rows"] = "replicated"
    #: Decay of an exponential moving average of the weights (Polyak averaging), updated after every
    #: optimiser step: evaluation, the results and the saved model use the average, which smooths
    #: the step-to-step noise of small batches (e.g. 0.999: about the last 1000 steps). None: off.
    ema: Annotated[float, Field(gt=0, lt=1)] | None = None
    #: Initial weights: a run directory of ``clinvert train`` (its ``checkpoint.pt``) or a
    #: checkpoint file. A fresh run starts from all of that model's state (its input
    #: normalisation included; the moving average where it had ``train.ema``) with a fresh
    #: optimiser, schedule and step count; the model must be built the same way (encoder,
    #: output head and size). None: random initialisation. ``--resume`` ignores it.
    init_from: str | None = None


class EvalConfig(_Section):
    """Evaluation on fresh samples every ``every`` steps and at the end."""

    every: Annotated[int, Field(ge=1)] = 250
    samples: Annotated[int, Field(ge=8, le=10_000_000)] = 4096
    correlation: Literal["pearson", "spearman"] = "pearson"


class LogConfig(_Section):
    """Where a run reports besides ``metrics.jsonl``: TensorBoard event files in the run directory
    (``tensorboard``; needs the ``tensorboard`` package, ``pip install 'clinvert[tensorboard]'``)."""

    tensorboard: bool = False


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
    #: Modules that register components this config names (``mypkg.similarities`` or a
    #: ``path/to/file.py``, relative to the working directory); imported before validation.
    plugins: Annotated[list[str], Field(max_length=64)] = []
    matched: bool | None = None
    claims: Annotated[list[Claim], Field(max_length=8)] = []
    latent: LatentConfig = LatentConfig()
    mixing: MixingConfig = MixingConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    #: A registered pair source's section (``SOURCES``, keyed by ``data.source``).
    data: SerializeAsAny[DataSpec] = SyntheticData()
    log: LogConfig = LogConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dictionary of the full resolved config.

        Synthetic runs leave out ``data``, runs without a ResNet leave out ``model.stem``, and
        sections and fields at their defaults that came later (``log``, ``model.self_negative``,
        ``train.ema``) are left out too, so resolved configs read as they did before those options
        existed and old run directories stay resumable.
        """
        out = self.model_dump(mode="json")
        if self.data == SyntheticData():
            del out["data"]
        else:  # unset optional fields of a source (data.size, data.test_x, ...) are left out
            out["data"] = {k: v for k, v in out["data"].items() if v is not None}
        if self.model.encoder != "resnet18" and self.model.stem == "imagenet":
            del out["model"]["stem"]
        if not self.model.self_negative:
            del out["model"]["self_negative"]
        if self.model.output_dim is None:
            del out["model"]["output_dim"]
        if self.train.slowvae == SlowVAEConfig() and self.train.objective != "slowvae":
            del out["train"]["slowvae"]
        if self.log == LogConfig():
            del out["log"]
        if self.train.ema is None:
            del out["train"]["ema"]
        if not self.plugins:
            del out["plugins"]
        return out

    def to_yaml(self) -> str:
        """The full resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def mixing_seed(self) -> int:
        """Seed of the mixing weights (``mixing.seed``, or the training seed)."""
        return self.mixing.seed if self.mixing.seed is not None else self.train.seed


def format_param(value: Any) -> str:
    """A law parameter as tables write it: ``0.3``, or ``[0.5, 0.1]`` for one per latent."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return f"{value:g}"


def _law(spec: Any, registry: Registry[Any]) -> str:
    law = registry.get(spec.name)
    params = {k: v for k, v in spec.model_dump().items() if k != "name"}
    label = getattr(law, "label", "") or spec.name
    symbols = getattr(law, "symbols", {})
    inner = ", ".join(f"{symbols.get(k, k)}={format_param(v)}" for k, v in params.items())
    return f"{label}({inner})" if inner else label


def describe_process(cfg: RunConfig) -> str:
    """'sphere / Uniform / vMF(κ=1)'-style label of the generative process."""
    lat = cfg.latent
    space = "R^n" if lat.space == "unbounded" else lat.space
    return f"{space} / {_law(lat.marginal, MARGINALS)} / {_law(lat.conditional, CONDITIONALS)}"


def describe_model(cfg: RunConfig) -> str:
    """'sphere, cosine, τ=1'-style label of the model."""
    m = cfg.model
    if cfg.train.objective == "slowvae":
        v = cfg.train.slowvae
        return f"SlowVAE (Laplace transitions, rate {v.rate:g}, γ={v.gamma:g}, β={v.beta:g})"
    space = "R^n" if m.output == "unbounded" else m.output
    loss = f"L{m.p:g}" if m.similarity == "lp" else m.similarity
    learn = " (learnable scale)" if m.learnable_scale else ""
    own = ", self-negative" if m.self_negative else ""
    return f"{space}{learn}, {loss}, τ={m.tau:g}{own}"


# ----- validation ------------------------------------------------------------------------------------
def _format_error(err: dict[str, Any], prefix: str = "") -> str:
    loc = tuple(str(part) for part in err.get("loc", ()))
    field = ".".join((prefix,) + loc if prefix else loc) or "<config>"
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        return f"{field}: unknown key (check the spelling; see README 'Config format')"
    if err.get("type") == "missing":
        return f"{field}: required field is missing"
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"{field}: {msg[0].lower()}{msg[1:]}, got {shown}"


def _one_line(exc: ValidationError, prefix: str = "") -> ConfigError:
    errors = exc.errors()
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(_format_error(errors[0], prefix) + more)


#: Sections whose fields depend on a registered name: (path, registry, tag key, spec of an entry).
_TAGGED: tuple[tuple[tuple[str, ...], Registry[Any], str], ...] = (
    (("latent", "marginal"), MARGINALS, "name"),
    (("latent", "conditional"), CONDITIONALS, "name"),
    (("data",), SOURCES, "source"),
)


def _resolve_tagged(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` in which every tagged section is validated by its registered spec.

    ``latent.conditional: {name: gennorm, ...}`` is checked against the section that the
    ``gennorm`` law registered, ``data: {source: arrays, ...}`` against the arrays source's, so the
    schema grows with the registries instead of keeping its own list of names and fields.
    """
    out = dict(data)
    for path, registry, tag in _TAGGED:
        parent = out
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                parent = None
                break
            parent[key] = dict(parent[key])
            parent = parent[key]
        if parent is None or path[-1] not in parent:
            continue
        field, raw = ".".join(path), parent[path[-1]]
        if not isinstance(raw, dict):
            raise ConfigError(f"{field}: must be a mapping with a {tag!r} key, got {raw!r}")
        if tag not in raw:
            if tag != "source":
                raise ConfigError(f"{field}: needs a {tag!r} key, got {raw!r}")
            raw = {**raw, tag: "synthetic"}
        entry = registry.get(raw[tag])
        spec = getattr(entry, "spec", None)
        try:
            parent[path[-1]] = spec.model_validate(raw)
        except ValidationError as exc:
            raise _one_line(exc, field) from None
    return out


def _check_combinations(cfg: RunConfig) -> None:
    latent, model = cfg.latent, cfg.model
    if latent.space == "sphere" and latent.dim < 2:
        raise ConfigError(f"latent.dim: the sphere needs dim >= 2, got {latent.dim}")
    if latent.box[0] >= latent.box[1]:
        raise ConfigError(f"latent.box: must be [low, high] with low < high, got {latent.box}")
    for field, registry in (("marginal", MARGINALS), ("conditional", CONDITIONALS)):
        name = getattr(latent, field).name
        spaces = registry.get(name).spaces
        if spaces is not None and latent.space not in spaces:
            there = [
                n for n, law in registry.items() if law.spaces is None or latent.space in law.spaces
            ]
            if len(spaces) == 1:
                where = f"space {spaces[0]}"
            else:
                bounded = "a bounded space" if "unbounded" not in spaces else "space"
                where = f"{bounded} ({' | '.join(spaces)})"
            raise ConfigError(
                f"latent.{field}.name: {name} is only defined on {where}, got "
                f"space={latent.space} (allowed there: {', '.join(there)})"
            )
        scale = getattr(getattr(latent, field), "scale", None)
        if isinstance(scale, list) and len(scale) != latent.dim:
            raise ConfigError(
                f"latent.{field}.scale: one number or one per latent ({latent.dim} numbers), "
                f"got {len(scale)}"
            )
    if model.output == "sphere" and (model.output_dim or latent.dim) < 2:
        raise ConfigError(
            f"model.output_dim: a sphere output needs at least 2 dimensions, got "
            f"{model.output_dim or latent.dim} (use output box or unbounded)"
        )
    outputs = SIMILARITIES.get(model.similarity).outputs
    if outputs is not None and model.output not in outputs:
        raise ConfigError(
            f"model.similarity: {model.similarity} needs model.output {' | '.join(outputs)}, got "
            f"output={model.output} (use similarity lp)"
        )


def _check_encoder(cfg: RunConfig) -> None:
    """Options that apply to some encoders only."""
    model = cfg.model
    encoder = ENCODERS.get(model.encoder)
    if model.stem != "imagenet" and model.encoder != "resnet18":
        raise ConfigError(
            f"model.stem: applies to the resnet18 encoder only, got {model.stem!r} with "
            f"encoder {model.encoder} (remove it)"
        )
    if cfg.train.objective == "slowvae" and model.encoder != "conv":
        raise ConfigError(
            f"model.encoder: SlowVAE (train.objective slowvae) is built on the conv encoder and "
            f"its mirrored decoder, got {model.encoder!r} (use conv)"
        )
    if encoder.inputs == "image" and model.input_norm == "whiten":
        raise ConfigError(
            "model.input_norm: whiten applies to vector observations; for images use standardize "
            "(per-channel, fitted on training images) or none, got 'whiten'"
        )


def _check_source(cfg: RunConfig) -> None:
    """The pair source's own rules, and whether the encoder takes what the source gives."""
    source = SOURCES.get(cfg.data.source)
    source.check_config(cfg)
    observations = source.observations_of(cfg)  # "vector", "image" or None (known once loaded)
    encoder = ENCODERS.get(cfg.model.encoder)
    if observations is not None and encoder.inputs != observations:
        if encoder.inputs == "image":
            raise ConfigError(
                f"model.encoder: {cfg.model.encoder} encodes images and needs a source of images, "
                f"got source={cfg.data.source} (use encoder mlp)"
            )
        allowed = [n for n, e in ENCODERS.items() if e.inputs == observations]
        raise ConfigError(
            f"model.encoder: source {cfg.data.source} needs an {observations} encoder, got "
            f"{cfg.model.encoder!r} (allowed: {', '.join(allowed)})"
        )


def check_data_dirs(cfg: RunConfig) -> None:
    """Raise a one-line ConfigError naming the field when the source's files are missing.

    Called before any work starts (and before the run directory is created); the content of the
    files is checked when the source loads them.
    """
    SOURCES.get(cfg.data.source).check_paths(cfg)


def import_plugins(plugins: Any) -> None:
    """Import the modules of a config's ``plugins`` list (each registers its components).

    A name ending in ``.py`` is a file path (relative to the working directory); anything else is a
    module name, looked up on ``sys.path`` with the working directory first. A module is imported
    once per process.
    """
    if plugins is None:
        return
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError(f"plugins: must be a list of module names or .py paths, got {plugins!r}")
    import importlib
    import importlib.util
    import sys

    for plugin in plugins:
        try:
            if plugin.endswith(".py"):
                path = Path(plugin).resolve()
                name = "clinvert_plugin_" + re.sub(r"\W", "_", str(path))
                if name in sys.modules:
                    continue
                if not path.is_file():
                    raise ConfigError(f"plugins: file not found, got {plugin!r}")
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                cwd = str(Path.cwd())
                if cwd not in sys.path:
                    sys.path.insert(0, cwd)
                importlib.import_module(plugin)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's module failed: say which and why
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            raise ConfigError(
                f"plugins: importing {plugin!r} failed ({type(exc).__name__}: {first})"
            ) from None


def validate_config(data: Any) -> RunConfig:
    """Validate a nested dictionary into a :class:`RunConfig` or raise a one-line :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"<config>: must be a mapping of sections, got {type(data).__name__}")
    import_plugins(data.get("plugins"))
    try:
        cfg = RunConfig.model_validate(_resolve_tagged(data))
    except ValidationError as exc:
        raise _one_line(exc) from None
    _check_combinations(cfg)
    _check_source(cfg)
    _check_encoder(cfg)
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
        except DuplicateKeyError as exc:
            raise ConfigError(
                f"--set {path}: key {exc.key!r} is given twice, got {raw!r}"
            ) from None
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
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"config: {path} line {exc.line}: key {exc.key!r} is given twice (first at line "
            f"{exc.first_line}); keep one"
        ) from None
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
    """Drop the ``profiles`` (and ``recipes``) sections of a config, merging in
    ``profiles[profile]`` when given.

    A profile holds the same sections as a config (typically ``train`` and ``eval``) and changes
    only how a run is executed: e.g. ``quick`` sizes a paper-scale row for a 2-core machine.
    """
    data = dict(data)
    data.pop("recipes", None)  # phases of profiles, read by clinvert.recipe
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
    validate. ``path`` may also name a shipped config (``table1/ROW``: see
    :mod:`clinvert.shipped`) when no such file exists."""
    if path is not None:
        from clinvert.shipped import resolve_config_path

        path = resolve_config_path(str(path))
    data = read_yaml(path) if path is not None else {}
    data = select_profile(data, profile)
    return validate_config(apply_overrides(data, overrides or []))
