"""Registries: one per kind of component, keyed by the names that configs use.

A registry maps a config name (``"cosine"``, ``"mlp"``, ``"arrays"`` ...) to the object that
implements it. The config schema reads its allowed names from the registries, so a component that a
user registers from their own module can be named in YAML at once::

    from clinvert.registry import SIMILARITIES  # or clinvert.register_similarity

    @SIMILARITIES.register("neg_l2_squared")
    def neg_l2_squared(a, b, p):
        return -torch.cdist(a, b) ** 2

Registries of this package (filled when :mod:`clinvert` is imported): ``SIMILARITIES``,
``HEADS``, ``ENCODERS``, ``SPACES``, ``MARGINALS``, ``CONDITIONALS``, ``SOURCES``, ``CALLBACKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from clinvert.errors import ConfigError

T = TypeVar("T")


class RegistryError(ConfigError):
    """A name is unknown to, or already taken in, a registry. ``str(err)`` is one line."""


class Registry(Generic[T]):
    """Names -> components of one kind.

    Args:
        kind: what the registry holds, as the config field that names it (``"model.encoder"``);
            used in error messages.

    Example:
        >>> r = Registry("model.widget")
        >>> @r.register("square")
        ... def square(x):
        ...     return x * x
        >>> r.get("square")(3), r.names()
        (9, ['square'])
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(
        self, name: str, obj: T | None = None, *, replace: bool = False
    ) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does.

        Raises:
            RegistryError: ``name`` is taken (pass ``replace=True`` to override it on purpose) or
                is not a plain identifier-like string.
        """
        if not isinstance(name, str) or not name or not name.replace("-", "_").isidentifier():
            raise RegistryError(
                f"{self.kind}: a registered name must be a non-empty identifier, got {name!r}"
            )

        def add(item: T) -> T:
            if name in self._items and not replace and self._items[name] is not item:
                raise RegistryError(
                    f"{self.kind}: {name!r} is already registered; pass replace=True to override it"
                )
            self._items[name] = item
            return item

        if obj is None:
            return add
        return add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and notebooks that re-register)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The component registered under ``name``.

        Raises:
            RegistryError: one line naming the field, the value and the allowed names.
        """
        load_builtins()
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from YAML
            raise RegistryError(
                f"{self.kind}: unknown name {name!r}, allowed: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        load_builtins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        load_builtins()
        return iter(self._items)

    def __len__(self) -> int:
        load_builtins()
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, component) pairs in registration order."""
        load_builtins()
        return list(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"


def check_name(registry: Registry[Any], value: Any) -> str:
    """``value`` if it is a name in ``registry``, else a ``ValueError`` listing the allowed names.

    Used by the config schema, whose error formatter puts the field in front of the message.
    """
    if not isinstance(value, str) or value not in registry:
        raise ValueError(f"unknown name, allowed: {', '.join(registry.names())}")
    return value


# ----- the registries of this package ----------------------------------------------------------------
#: Similarities s(a, b) of the InfoNCE family (:class:`clinvert.losses.Similarity`).
SIMILARITIES: Registry[Any] = Registry("model.similarity")
#: Output heads, name -> ``cls(dim, scale=..., learnable=...)`` (:mod:`clinvert.models.heads`).
HEADS: Registry[Any] = Registry("model.output")
#: Encoders (:class:`clinvert.models.EncoderSpec`).
ENCODERS: Registry[Any] = Registry("model.encoder")
#: Latent spaces, name -> :class:`clinvert.latents.spaces.Space` subclass.
SPACES: Registry[Any] = Registry("latent.space")
#: Marginals p(z) (:class:`clinvert.latents.distributions.Law`).
MARGINALS: Registry[Any] = Registry("latent.marginal.name")
#: Conditionals p(z~ | z) (:class:`clinvert.latents.distributions.Law`).
CONDITIONALS: Registry[Any] = Registry("latent.conditional.name")
#: Pair sources, name -> :class:`clinvert.data.sources.PairSource` subclass.
SOURCES: Registry[Any] = Registry("data.source")

_BUILTINS = (
    "clinvert.latents",
    "clinvert.losses",
    "clinvert.models",
    "clinvert.data.synthetic",
    "clinvert.data.arrays",
    "clinvert.data.threedident.source",
    "clinvert.data.kitti.source",
)
_loaded = False


def load_builtins() -> None:
    """Import the modules that register this package's own components (idempotent)."""
    global _loaded
    if _loaded:
        return
    import importlib

    _loaded = True  # first: a builtin module that reads a registry while importing must not recurse
    try:
        for module in _BUILTINS:
            importlib.import_module(module)
    except BaseException:
        _loaded = False
        raise
