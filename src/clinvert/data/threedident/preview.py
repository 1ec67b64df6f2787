"""A fast 3DIdent renderer without Blender: a small pure-torch software rasteriser.

The teapot mesh is projected with the fixed pinhole camera of :mod:`~clinvert.data.threedident.scene`
and rasterised with a z-buffer (each triangle tests the pixels of its bounding box, all triangles and
images at once; nearest depth wins through ``scatter_reduce``). The ground plane is ray-cast per pixel.
Shading is Lambertian, two-sided, with the spotlight's cone (Blender's smoothstep blend), inverse
square falloff and a shadow map rendered from the spotlight, plus a uniform ambient term. Pixels are
supersampled ``ssaa x ssaa`` and averaged in linear light, then sRGB-encoded and rounded to uint8.

Everything runs in float32 on the CPU with deterministic operations and no BLAS kernels (MKL's
round with the memory alignment of their operands), so the same latents always give the same bytes
on one machine, however the batch or the heap looks. Differences from Cycles: no indirect light
(colour bleeding), no ambient occlusion, hard shadows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clinvert.data.threedident import scene
from clinvert.data.threedident.factors import to_physical
from clinvert.data.threedident.teapot import teapot_mesh

#: 2: no MKL kernels (bytes independent of heap layout); 3: scene 2 (the teapot twice as large);
#: 4: scene 3 (rot_beta within +-60 degrees, away from the gimbal lock)
VERSION = "preview 4"
_CANDIDATES_PER_CHUNK = 3_000_000  # bounds memory of the rasteriser (candidate pixels per chunk)


def _rasterize(
    screen: torch.Tensor, valid_face: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z-buffer rasterisation of triangles given in pixel coordinates.

    ``screen`` [B, F, 3, 3]: per face and corner (column, row, depth) with pixel centres at
    ``i + 0.5``; ``valid_face`` [B, F] bool. Returns face index [B, H, W] (-1 where empty),
    screen-space barycentrics [B, H, W, 3] and depth [B, H, W] (inf where empty).

    Each triangle tests the pixel centres of a ``k x k`` window at its bounding box (``k`` the
    largest box in the batch); barycentrics and depth are affine in the pixel centre, so per face
    they are planes, evaluated with explicit products and sums (no MKL kernel: the same bytes
    whatever the memory layout).
    """
    n_img, n_face = screen.shape[:2]
    x, y, z = screen[..., 0], screen[..., 1], screen[..., 2]
    x0 = torch.ceil(x.amin(-1) - 0.5).clamp(0, width)
    x1 = torch.floor(x.amax(-1) - 0.5).clamp(-1, width - 1)
    y0 = torch.ceil(y.amin(-1) - 0.5).clamp(0, height)
    y1 = torch.floor(y.amax(-1) - 0.5).clamp(-1, height - 1)
    wx, wy = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
    area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (y[..., 1] - y[..., 0]) * (
        x[..., 2] - x[..., 0]
    )
    valid_face = valid_face & (area.abs() > 1e-9) & (wx > 0) & (wy > 0)
    wx, wy = torch.where(valid_face, wx, 0), torch.where(valid_face, wy, 0)
    kx, ky = max(int(wx.max()), 1), max(int(wy.max()), 1)

    # b_i(p) = (edge opposite corner i evaluated at p) / area = a_i * px + c_i * py + d_i
    inv = 1.0 / torch.where(valid_face, area, torch.ones_like(area))
    j, k = [1, 2, 0], [2, 0, 1]
    xj, xk, yj, yk = x[..., j], x[..., k], y[..., j], y[..., k]
    coef_x = -(yk - yj) * inv[..., None]  # [B, F, 3]
    coef_y = (xk - xj) * inv[..., None]
    coef_c = ((yk - yj) * xj - (xk - xj) * yj) * inv[..., None]
    # local frame: evaluate at offsets from the window origin (x0 + 0.5, y0 + 0.5)
    base = coef_x * (x0 + 0.5)[..., None] + coef_y * (y0 + 0.5)[..., None] + coef_c
    planes = torch.stack([coef_x, coef_y, base], -1)  # [B, F, 3 (b_i), 3 (dx, dy, 1)]
    planes = torch.cat([planes, (planes * z[..., None]).sum(-2, keepdim=True)], -2)  # + depth

    col_off = torch.arange(kx, dtype=torch.float32)
    row_off = torch.arange(ky, dtype=torch.float32)
    face_out = torch.full((n_img * height * width,), -1, dtype=torch.long)
    bary_out = torch.zeros(n_img * height * width, 3)
    depth_out = torch.full((n_img * height * width,), math.inf)
    step = max(1, _CANDIDATES_PER_CHUNK // max(1, n_face * kx * ky))
    tol = -1e-5
    for start in range(0, n_img, step):
        sl = slice(start, min(n_img, start + step))
        pl = planes[sl, :, :3]
        # b_i(dx, dy) = (c + a_y * dy) + a_x * dx: one pass over the [b, F, 3, ky, kx] candidates
        rows = pl[..., 2:3] + pl[..., 1:2] * row_off  # [b, F, 3, ky]
        bary = rows[..., None] + (pl[..., 0:1] * col_off)[..., None, :]
        inside = (bary >= tol).all(2)  # [b, F, ky, kx]
        inside &= (col_off < wx[sl, :, None, None]) & (row_off[:, None] < wy[sl, :, None, None])
        img, face, cy, cx = inside.nonzero(as_tuple=True)
        if img.numel() == 0:
            continue
        img = img + start
        # the same expression (same rounding) for the candidates only, depth plane included
        p = planes[img, face]  # [M, 4, 3]
        val = (p[..., 2] + p[..., 1] * row_off[cy, None]) + p[..., 0] * col_off[cx, None]
        px = x0[img, face].long() + cx
        py = y0[img, face].long() + cy
        pix = (img * height + py) * width + px
        d = val[:, 3]
        depth_out.scatter_reduce_(0, pix, d, reduce="amin")
        win = (d == depth_out[pix]).nonzero(as_tuple=True)[0]
        best = torch.full_like(face_out, -1).scatter_reduce_(0, pix[win], win, reduce="amax")
        hit = (best >= 0).nonzero(as_tuple=True)[0]
        chosen = best[hit]
        face_out[hit] = face[chosen]
        bary_out[hit] = val[chosen, :3]
    return (
        face_out.view(n_img, height, width),
        bary_out.view(n_img, height, width, 3),
        depth_out.view(n_img, height, width),
    )


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 copy in torch's own (64-byte aligned) memory, never a view of numpy's buffer:
    the same latents then meet the same memory layout whatever the heap looked like."""
    return torch.tensor(np.asarray(array), dtype=torch.float32)


def _rotate(rot: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``rot`` [B, 3, 3] applied to ``points`` [B, V, 3], as explicit products and sums.

    Not ``einsum``/``matmul``: MKL's kernels round differently with the memory alignment of their
    operands, which would make the same latents render to different bytes from run to run.
    """
    return (rot[:, None] * points[:, :, None, :]).sum(-1)


def _project(
    points: torch.Tensor, origin: torch.Tensor, rot: torch.Tensor, focal: float, size: int
) -> torch.Tensor:
    """Points [B, V, 3] -> (column, row, depth) [B, V, 3] for cameras at ``origin`` [B, 3] with
    world-to-camera rotations ``rot`` [B, 3, 3] (rows right, up, forward)."""
    cam = _rotate(rot, points - origin[:, None])
    depth = cam[..., 2]
    inv = 1.0 / depth.clamp(min=1e-6)
    col = size / 2 + focal * cam[..., 0] * inv
    row = size / 2 - focal * cam[..., 1] * inv
    return torch.stack([col, row, depth], -1)


def _look_at(origin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """World-to-camera rotations [B, 3, 3] (rows right, up, forward) looking from origin to target."""
    fwd = torch.nn.functional.normalize(target - origin, dim=-1)
    zup = torch.tensor([0.0, 0.0, 1.0]).expand_as(fwd)
    right = torch.linalg.cross(fwd, zup)
    # a light straight above its target: any horizontal 'right' will do
    right = torch.where(
        right.norm(dim=-1, keepdim=True) < 1e-6, torch.tensor([1.0, 0.0, 0.0]), right
    )
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(right, fwd)
    return torch.stack([right, up, fwd], 1)


def _srgb(linear: torch.Tensor) -> torch.Tensor:
    c = linear.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.pow(1 / 2.4) - 0.055)


@torch.no_grad()
def _render_batch(phys: np.ndarray, size: int, ssaa: int, resolution: int) -> np.ndarray:
    mesh = teapot_mesh(resolution)
    n = phys.shape[0]
    res = size * ssaa
    verts0 = torch.tensor(mesh.vertices, dtype=torch.float32)
    norms0 = torch.tensor(mesh.normals, dtype=torch.float32)
    faces = torch.tensor(mesh.faces)
    rot = _tensor(scene.euler_xyz(phys[:, 3], phys[:, 4], phys[:, 5]))
    pos = _tensor(phys[:, :3])
    verts = _rotate(rot, verts0.expand(n, -1, -1)) + pos[:, None]  # [B, V, 3]
    norms = _rotate(rot, norms0.expand(n, -1, -1))

    cam_pos_np, cam_rot_np = scene.camera_frame()
    cam_pos = _tensor(cam_pos_np).expand(n, 3)
    cam_rot = _tensor(cam_rot_np).expand(n, 3, 3)
    focal = (res / 2) / math.tan(scene.CAMERA_FOV / 2)
    scr = _project(verts, cam_pos, cam_rot, focal, res)[:, faces]  # [B, F, 3, 3]
    face_id, bary, depth = _rasterize(scr, (scr[..., 2] > 0.05).all(-1), res, res)

    # per-pixel camera rays with unit forward component: P = C + ray * depth
    c = (torch.arange(res, dtype=torch.float32) + 0.5 - res / 2) / focal
    u, v = c.view(1, -1).expand(res, res), -c.view(-1, 1).expand(res, res)
    ray = u[..., None] * cam_rot[0, 0] + v[..., None] * cam_rot[0, 1] + cam_rot[0, 2]  # [H, W, 3]
    t_ground = (scene.GROUND_Z - cam_pos[0, 2]) / ray[..., 2]
    t_ground = torch.where(t_ground > 0, t_ground, torch.full_like(t_ground, math.inf))
    on_obj = (face_id >= 0) & (depth < t_ground)
    t = torch.where(on_obj, depth, t_ground.expand_as(depth))
    hit_any = torch.isfinite(t)
    t = torch.where(hit_any, t, torch.zeros_like(t))
    point = cam_pos[0] + ray * t[..., None]  # [B, H, W, 3]

    fid = face_id.clamp(min=0)
    corner = faces[fid]  # [B, H, W, 3]
    bidx = torch.arange(n).view(-1, 1, 1, 1)
    nrm = (norms[bidx, corner] * bary[..., None]).sum(-2)
    nrm = torch.where(on_obj[..., None], nrm, torch.tensor([0.0, 0.0, 1.0]))
    nrm = torch.nn.functional.normalize(nrm, dim=-1)
    to_cam = cam_pos[0] - point
    nrm = torch.where(((nrm * to_cam).sum(-1, keepdim=True) < 0), -nrm, nrm)

    # spotlight: position, axis, cone mask, inverse square falloff, Lambert
    spot = _tensor(scene.spot_position(phys))  # [B, 3]
    axis = torch.nn.functional.normalize(pos - spot, dim=-1)
    to_light = spot.view(n, 1, 1, 3) - point
    dist2 = (to_light * to_light).sum(-1).clamp(min=1e-6)
    ldir = to_light / dist2.sqrt()[..., None]
    cos_axis = -(ldir * axis.view(n, 1, 1, 3)).sum(-1)
    cos_half = math.cos(scene.SPOT_SIZE / 2)
    smooth = (1 - cos_half) * scene.SPOT_BLEND
    s = ((cos_axis - cos_half) / smooth).clamp(0, 1)
    cone = s * s * (3 - 2 * s)
    lambert = (nrm * ldir).sum(-1).clamp(min=0)

    # shadow map from the spotlight (its cone fits a 2 * half-angle field of view)
    light_rot = _look_at(spot, pos)
    smap = max(64, size)
    lfocal = (smap / 2) / math.tan(scene.SPOT_SIZE / 2)
    lscr = _project(verts, spot, light_rot, lfocal, smap)[:, faces]
    _, _, ldepth = _rasterize(lscr, (lscr[..., 2] > 0.05).all(-1), smap, smap)
    pl = _project(point.view(n, -1, 3), spot, light_rot, lfocal, smap)  # [B, HW, 3]
    col = pl[..., 0].floor().long().clamp(0, smap - 1)
    row = pl[..., 1].floor().long().clamp(0, smap - 1)
    occluder = ldepth.view(n, -1).gather(1, row * smap + col)
    lit = (pl[..., 2] <= occluder * 1.02 + 0.02).view(n, res, res)

    intensity = scene.SPOT_POWER / (4 * math.pi) / math.pi
    irr = intensity * lambert * cone * lit / dist2
    obj_rgb = _tensor(scene.hsv_to_rgb(phys[:, 7], scene.OBJECT_SV))
    spot_rgb = _tensor(scene.hsv_to_rgb(phys[:, 8], scene.SPOT_SV))
    bg_rgb = _tensor(scene.hsv_to_rgb(phys[:, 9], scene.BACKGROUND_SV))
    albedo = torch.where(on_obj[..., None], obj_rgb.view(n, 1, 1, 3), bg_rgb.view(n, 1, 1, 3))
    light = scene.AMBIENT + irr[..., None] * spot_rgb.view(n, 1, 1, 3)
    radiance = torch.where(
        hit_any[..., None], albedo * light, scene.AMBIENT * bg_rgb.view(n, 1, 1, 3)
    )
    if ssaa > 1:
        radiance = radiance.view(n, size, ssaa, size, ssaa, 3).mean((2, 4))
    return (_srgb(radiance) * 255.0).round().to(torch.uint8).numpy()


def render(
    latents: np.ndarray,
    size: int,
    mode: str = "box",
    *,
    ssaa: int = 1,
    resolution: int = 8,
    batch_size: int = 64,
) -> np.ndarray:
    """Render latents [N, 10] (``mode`` coordinates) to sRGB images uint8 [N, size, size, 3].

    ``ssaa``: supersampling factor per side; ``resolution``: mesh grid cells per Bezier patch side;
    ``batch_size``: images rasterised together (memory is bounded in any case).
    """
    phys = to_physical(latents, mode)
    out = np.empty((phys.shape[0], size, size, 3), np.uint8)
    for start in range(0, phys.shape[0], batch_size):
        out[start : start + batch_size] = _render_batch(
            phys[start : start + batch_size], size, ssaa, resolution
        )
    return out
