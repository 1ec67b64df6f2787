"""Cycles worker: renders 3DIdent images with Blender's ``bpy`` (stdlib + numpy + bpy only).

Run by :mod:`clinvert.data.threedident.cycles` in an interpreter that has ``bpy`` (Blender's
Python 3.11 wheel needs numpy<2, so it lives in its own virtual environment)::

    python _cycles_worker.py JOB.npz OUT_DIR

``JOB.npz`` holds the teapot mesh, the scene constants and per image the object pose, spotlight
position and three colours (all precomputed by the parent). The scene is built once; per image only
the latent-dependent properties change. Each finished image is ``OUT_DIR/<index>.png`` and a line
``done <index>`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys

# this file sits next to clinvert's ``cycles.py``; never let it shadow Blender's ``cycles`` add-on
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402


def _diffuse(bpy, name: str):  # noqa: ANN001, ANN202
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    bsdf = nodes.new("ShaderNodeBsdfDiffuse")
    out = nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    return mat, bsdf


def main() -> None:
    """Render the job given on the command line."""
    import bpy  # noqa: I001 - first: addon_utils, bmesh, mathutils come with it
    import addon_utils
    import bmesh
    from mathutils import Vector

    job = np.load(sys.argv[1])
    out_dir = sys.argv[2]
    cfg = json.loads(str(job["config"]))
    for ob in list(bpy.data.objects):  # the default cube, light and camera
        bpy.data.objects.remove(ob, do_unlink=True)
    addon_utils.enable("cycles", default_set=True)
    sc = bpy.context.scene
    sc.render.engine = "CYCLES"
    sc.cycles.device = "CPU"
    sc.cycles.samples = int(cfg["samples"])
    sc.cycles.use_adaptive_sampling = False
    sc.cycles.use_denoising = bool(cfg["denoise"])
    sc.cycles.seed = 0
    # Keep the synced scene (BVH, shaders, denoiser) between frames: at 64 x 64 the per-frame
    # re-sync cost more than the path tracing. Same bytes as without it (measured on 12 images).
    sc.render.use_persistent_data = True
    if int(cfg.get("threads", 0)) > 0:  # several workers side by side: one thread each
        sc.render.threads_mode = "FIXED"
        sc.render.threads = int(cfg["threads"])
    sc.render.resolution_x = sc.render.resolution_y = int(cfg["size"])
    sc.render.resolution_percentage = 100
    sc.render.film_transparent = False
    sc.view_settings.view_transform = "Standard"
    sc.view_settings.look = "None"
    sc.render.image_settings.file_format = "PNG"
    sc.render.image_settings.color_mode = "RGB"
    sc.render.image_settings.color_depth = "8"

    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (*([cfg["ambient"]] * 3), 1.0)
    bg.inputs["Strength"].default_value = 1.0
    sc.world = world

    cam_data = bpy.data.cameras.new("camera")
    cam_data.angle = cfg["camera_fov"]
    cam = bpy.data.objects.new("camera", cam_data)
    cam.location = Vector(cfg["camera_pos"])
    direction = Vector(cfg["camera_target"]) - cam.location
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    sc.collection.objects.link(cam)
    sc.camera = cam

    g, half = cfg["ground_z"], 200.0
    ground_mesh = bpy.data.meshes.new("ground")
    ground_mesh.from_pydata(
        [(-half, -half, g), (half, -half, g), (half, half, g), (-half, half, g)], [], [(0, 1, 2, 3)]
    )
    ground = bpy.data.objects.new("ground", ground_mesh)
    ground_mat, ground_bsdf = _diffuse(bpy, "ground")
    ground_mesh.materials.append(ground_mat)
    sc.collection.objects.link(ground)

    mesh = bpy.data.meshes.new("teapot")
    mesh.from_pydata(job["vertices"].tolist(), [], job["faces"].tolist())
    bm = bmesh.new()
    bm.from_mesh(mesh)
    bmesh.ops.remove_doubles(bm, verts=bm.verts, dist=1e-6)
    bmesh.ops.recalc_face_normals(bm, faces=bm.faces)
    bm.to_mesh(mesh)
    bm.free()
    mesh.shade_smooth()
    teapot = bpy.data.objects.new("teapot", mesh)
    teapot.rotation_mode = "XYZ"
    obj_mat, obj_bsdf = _diffuse(bpy, "teapot")
    mesh.materials.append(obj_mat)
    sc.collection.objects.link(teapot)

    light = bpy.data.lights.new("spot", "SPOT")
    light.energy = cfg["spot_power"]
    light.spot_size = cfg["spot_size"]
    light.spot_blend = cfg["spot_blend"]
    light.shadow_soft_size = 0.0
    spot = bpy.data.objects.new("spot", light)
    track = spot.constraints.new("TRACK_TO")
    track.target = teapot
    track.track_axis = "TRACK_NEGATIVE_Z"
    track.up_axis = "UP_Y"
    sc.collection.objects.link(spot)

    for k, index in enumerate(job["indices"].tolist()):
        teapot.location = job["position"][k].tolist()
        teapot.rotation_euler = job["rotation"][k].tolist()
        spot.location = job["spot_position"][k].tolist()
        light.color = job["spot_rgb"][k].tolist()
        obj_bsdf.inputs["Color"].default_value = (*job["object_rgb"][k].tolist(), 1.0)
        ground_bsdf.inputs["Color"].default_value = (*job["background_rgb"][k].tolist(), 1.0)
        path = os.path.join(out_dir, f"{index}.png")
        sc.render.filepath = path
        bpy.ops.render.render(write_still=True)
        print(f"done {index}", flush=True)


if __name__ == "__main__":
    main()
