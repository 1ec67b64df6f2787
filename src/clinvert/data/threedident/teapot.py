"""The Utah teapot as a triangle mesh, from Newell's 32 bicubic Bezier patches.

``teapot.bpt`` (package data, ``clinvert/data/assets``) holds the patches: the number of patches,
then per patch a line ``3 3`` and 16 control points ``x y z`` row by row. Each patch is evaluated on
a ``(resolution + 1)^2`` grid of (u, v) with cubic Bernstein polynomials; each grid cell gives two
triangles, and triangles of (near) zero area, found where a patch edge collapses to a point (lid
top, bottom), are dropped. Normals come from the patch derivatives (du x dv), evaluated slightly
inside the patch so that collapsed edges still get a normal. Patch orientations are not consistent
in the original data, so renderers shade two-sided.

The mesh is returned in *scene units*: centred on the centre of its bounding box and scaled so that
its longest half-extent (x, spout to handle) is 1. The object position factors move this centre.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` float64 [V, 3], ``faces`` int64 [F, 3], ``normals`` [V, 3]."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray


def read_patches(text: str | None = None) -> np.ndarray:
    """Control points of the patches, float64 [P, 4, 4, 3], from ``text`` or the packaged file."""
    if text is None:
        text = (resources.files("clinvert.data") / "assets" / "teapot.bpt").read_text()
    tokens = text.split()
    count, pos = int(tokens[0]), 1
    patches = []
    for _ in range(count):
        du, dv = int(tokens[pos]), int(tokens[pos + 1])
        pos += 2
        if (du, dv) != (3, 3):
            raise ValueError(f"teapot.bpt: only bicubic patches are supported, got {du} {dv}")
        pts = np.array(tokens[pos : pos + 48], dtype=np.float64).reshape(4, 4, 3)
        pos += 48
        patches.append(pts)
    return np.stack(patches)


def _bernstein(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Bernstein basis [len(t), 4] and its derivative."""
    s = 1.0 - t
    b = np.stack([s**3, 3 * t * s**2, 3 * t**2 * s, t**3], axis=1)
    db = np.stack([-3 * s**2, 3 * s**2 - 6 * t * s, 6 * t * s - 3 * t**2, 3 * t**2], axis=1)
    return b, db


def _raw_mesh(patches: np.ndarray, resolution: int) -> Mesh:
    t = np.linspace(0.0, 1.0, resolution + 1)
    b, _ = _bernstein(t)
    eps = 1e-3  # normals slightly inside the patch: defined where an edge collapses to a point
    bn, dbn = _bernstein(np.clip(t, eps, 1.0 - eps))
    # points[p, i, j] = sum_ab B_a(u_i) B_b(v_j) P[p, a, b]
    pts = np.einsum("ia,jb,pabk->pijk", b, b, patches)
    du = np.einsum("ia,jb,pabk->pijk", dbn, bn, patches)
    dv = np.einsum("ia,jb,pabk->pijk", bn, dbn, patches)
    nrm = np.cross(du, dv)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    g = resolution + 1
    n_patch = patches.shape[0]
    idx = np.arange(n_patch * g * g).reshape(n_patch, g, g)
    a, b_, c, d = idx[:, :-1, :-1], idx[:, 1:, :-1], idx[:, 1:, 1:], idx[:, :-1, 1:]
    faces = np.concatenate(
        [np.stack([a, b_, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)]
    )
    return Mesh(pts.reshape(-1, 3), faces, nrm.reshape(-1, 3))


def _drop_degenerate(mesh: Mesh, rel_eps: float = 1e-10) -> Mesh:
    v = mesh.vertices[mesh.faces]
    area2 = np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    scale = np.ptp(mesh.vertices, axis=0).max() ** 2
    keep = area2 > rel_eps * scale
    faces = mesh.faces[keep]
    used, inverse = np.unique(faces, return_inverse=True)
    return Mesh(mesh.vertices[used], inverse.reshape(-1, 3).astype(np.int64), mesh.normals[used])


@functools.lru_cache(maxsize=8)
def teapot_mesh(resolution: int = 8) -> Mesh:
    """The teapot mesh in scene units (cached): ``resolution`` grid cells per patch side.

    Resolution 8 gives about 4,000 triangles, plenty for images up to 224 x 224.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    mesh = _drop_degenerate(_raw_mesh(read_patches(), resolution))
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    verts = (mesh.vertices - centre) / half
    for arr in (verts, mesh.faces, mesh.normals):
        arr.setflags(write=False)
    return Mesh(verts, mesh.faces, mesh.normals)
