"""clinvert: contrastive learning inverts the data generating process, runnable and measurable.

The parts most users need are importable from here (loaded on first use, so ``import clinvert``
stays light):

* :class:`ContrastiveEncoder` and :func:`load`: a scikit-learn estimator for your own paired arrays
  or sequences, and loading a saved estimator or any run directory of ``clinvert train``;
* :func:`register_similarity`, :func:`register_encoder`: extension points named in YAML;
* :class:`Trainer`, :class:`Callback`: the training engine and its hooks.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ContrastiveEncoder": "clinvert.estimator",
    "load": "clinvert.estimator",
    "register_similarity": "clinvert.losses",
    "register_encoder": "clinvert.models",
    "Trainer": "clinvert.train",
    "Callback": "clinvert.callbacks",
    "TensorBoardLogger": "clinvert.callbacks",
    "CSVLogger": "clinvert.callbacks",
    "load_config": "clinvert.config",
    "ConfigError": "clinvert.errors",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from clinvert.provenance import version

        return version()
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clinvert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
