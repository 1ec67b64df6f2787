"""KITTI Masks (Klindt et al., ICLR 2021): pedestrian masks from driving videos, temporal pairs.

* :mod:`~clinvert.data.kitti.masks` reads (and writes) the published pickle with a restricted
  unpickler;
* :mod:`~clinvert.data.kitti.walkers` makes mask sequences in the same format here: walking
  silhouettes whose three factors follow sparse (Laplace) or Gaussian transitions;
* :mod:`~clinvert.data.kitti.source` is the ``kitti`` pair source (``data.source: kitti``).
"""

from clinvert.data.kitti.masks import KittiMasks, load_kitti_masks, write_kitti_masks

__all__ = ["KittiMasks", "load_kitti_masks", "write_kitti_masks"]
