"""3DIdent: the Utah teapot rendered from ten latent factors (Zimmermann et al. 2021, section 4).

Modules:
    factors   the ten latents, their sampling and their physical ranges (``box`` / ``periodic``)
    teapot    the Newell teapot mesh from its Bezier patches (package data ``teapot.bpt``)
    scene     the fixed scene (camera, ground, spotlight, colours) shared by both renderers
    preview   a fast pure-torch rasteriser (no Blender)
    cycles    the same scene in Blender Cycles, run in a separate interpreter with ``bpy``
    store     the dataset directory (manifest.json, latents.npy, images/*.png, images.npy)
"""

from clinvert.data.threedident.factors import FACTORS, MODES, sample_latents, to_physical

__all__ = ["FACTORS", "MODES", "sample_latents", "to_physical"]
