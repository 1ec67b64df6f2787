"""The ``kitti`` pair source: temporal pairs of KITTI Masks sequences (or generated ones).

Config::

    data: {source: kitti, path: data/kitti/kitti_peds_v2.pickle, max_delta_t: 5}

Pairs are those of the :class:`~clinvert.data.arrays.ArraysSource` on sequences: a start frame drawn
over every (sequence, frame) that has a successor, its partner ``dt`` frames later, ``dt`` uniform in
1..``max_delta_t`` and clipped to the sequence's end. Masks become one-channel 0/1 images; the
three factors (centre of mass y, x, area) score the codes. As in the paper, the encoder is scored on
the training frames themselves (the first ``eval.samples`` of them, in file order), with MCC on
Spearman correlations when ``eval.correlation: spearman``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import Field

from clinvert.data.arrays import ArraysSource
from clinvert.data.kitti.masks import FACTORS, load_kitti_masks
from clinvert.errors import ConfigError
from clinvert.registry import SOURCES
from clinvert.spec import DataSpec

if TYPE_CHECKING:
    from clinvert.config import RunConfig


class KittiData(DataSpec):
    """``data`` section of a KITTI Masks run: the pickle's ``path`` and the largest frame gap."""

    source: Literal["kitti"] = "kitti"
    path: str | None = None
    max_delta_t: Annotated[int, Field(ge=1, le=1000)] = 5


class KittiSource(ArraysSource):
    """Temporal pairs of mask sequences read from ``data.path``; see the module docstring."""

    spec = KittiData

    def __init__(self, cfg: RunConfig, device: torch.device, **_: Any) -> None:
        self.check_paths(cfg)
        data = load_kitti_masks(cfg.data.path)
        self.path = str(cfg.data.path)
        self.sequences_count = len(data.masks)
        super().__init__(
            cfg,
            device,
            x=data.masks,
            z=data.latents,
            names={
                "x": f"data.path ({self.path}): masks",
                "z": f"data.path ({self.path}): latents",
            },
        )

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Nothing beyond the section's own fields: any output dimension works (MCC matches the
        three factors to three of the outputs)."""

    @classmethod
    def check_paths(cls, cfg: RunConfig) -> None:
        path = cfg.data.path
        if not path:
            raise ConfigError("data.path: required for source kitti (the KITTI Masks pickle)")
        if not Path(path).is_file():
            raise ConfigError(
                f"data.path: file not found, got {path!r} ('clinvert kitti fetch' says where the "
                "public file comes from; 'clinvert kitti generate' makes one here)"
            )

    def result_fields(self) -> dict[str, Any]:
        fields = super().result_fields()
        fields["data"] = {
            **fields["data"],
            "path": self.path,
            "sequences": self.sequences_count,
            "factors": list(FACTORS),
        }
        return fields


SOURCES.register("kitti", KittiSource)
