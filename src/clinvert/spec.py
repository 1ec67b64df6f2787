"""Building blocks of the config schema shared by the components that bring their own section.

A component with parameters (a latent law, a pair source) declares them as a :class:`Section`
subclass and registers it next to its implementation; :mod:`clinvert.config` assembles the schema
from those registrations, so no second list of names or fields lives in ``config.py``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Section(BaseModel):
    """A config section: unknown keys refused, types strict, values frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LawSpec(Section):
    """Parameters of a latent law (marginal or conditional), tagged by its registered ``name``."""

    name: str


class DataSpec(Section):
    """Parameters of a pair source, tagged by its registered ``source`` name."""

    source: str = "synthetic"
