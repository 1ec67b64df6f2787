"""3DIdent training path: ResNet-18, nearest-neighbour pairs, config checks, end-to-end image runs.

The datasets here are tiny stand-ins in the renderer's format (``clinvert-3dident/1``) in which every
factor is visible: a disc (position, radius, brightness, hue), a square behind it (position, hue) and
a background (hue, direction of a brightness gradient).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clinvert.cli import main
from clinvert.config import ConfigError, validate_config
from clinvert.data.images import load_image_dataset
from clinvert.data.pairs import (
    NearestNeighbours,
    PairBatches,
    auto_backend,
    embed_latents,
    make_pair_loader,
)
from clinvert.data.threedident.factors import FACTORS, circular_factors
from clinvert.latents import NoiseLaw
from clinvert.models import make_model
from clinvert.models.resnet import ResNet18Backbone


def _hue_rgb(h: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) -> RGB [.., 3] in [0, 1] at full saturation and value."""
    k = (h[..., None] * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def write_toy_dataset(
    root: Path, n: int, size: int = 16, seed: int = 0, mode: str = "box", complete: bool = True
) -> Path:
    """A dataset in the renderer's format where each of the ten factors changes the image."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-1.0, 1.0, size=(n, 10)).astype(np.float32)
    unit = (z + 1.0) / 2.0  # [0, 1]
    circular = circular_factors(mode)
    cols = [FACTORS.index(f) for f in circular]
    z[:, cols] = np.clip(z[:, cols] * math.pi, -math.pi, math.pi - 1e-6).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    cx, cy = 0.2 + 0.6 * unit[:, 0], 0.2 + 0.6 * unit[:, 1]
    radius = 0.12 + 0.15 * unit[:, 2]
    inside = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
    inside = inside < radius[:, None, None] ** 2
    fg = _hue_rgb(0.8 * unit[:, 7]) * (0.5 + 0.5 * unit[:, 3:4])
    sx, sy = 0.15 + 0.7 * unit[:, 4], 0.15 + 0.7 * unit[:, 5]
    square = (np.abs(xx[None] - sx[:, None, None]) < 0.1) & (
        np.abs(yy[None] - sy[:, None, None]) < 0.1
    )
    angle = np.pi * unit[:, 6, None, None]
    ramp = np.cos(angle) * (xx[None] - 0.5) + np.sin(angle) * (yy[None] - 0.5)
    bg = _hue_rgb(0.8 * unit[:, 9])[:, None, None, :] * (0.45 + 0.3 * ramp[..., None])
    img = np.where(square[..., None], _hue_rgb(0.8 * unit[:, 8])[:, None, None, :] * 0.8, bg)
    img = np.where(inside[..., None], fg[:, None, None, :], img)
    images = (img * 255).round().astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "latents.npy", z)
    np.save(root / "images.npy", images)
    manifest = {
        "format": "clinvert-3dident/1",
        "backend": "preview",
        "renderer": "toy-discs",
        "size": size,
        "samples": None,
        "mode": mode,
        "n": n,
        "seed": seed,
        "factors": list(FACTORS),
        **({"circular": circular} if circular else {}),
        "complete": complete,
        "seconds": 0.0,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def image_config(toy: dict[str, Path], **train: object) -> dict:
    return {
        "name": "toy-3dident",
        "latent": {
            "dim": 10,
            "space": "box",
            "box": [-1.0, 1.0],
            "marginal": {"name": "uniform"},
            "conditional": {"name": "normal", "scale": 0.1},
        },
        "model": {
            "encoder": "resnet18",
            "input_norm": "standardize",
            "output": "unbounded",
            "similarity": "lp",
            "p": 2,
        },
        "train": {
            "batch_size": 8,
            "steps": 4,
            "lr": 1e-3,
            "device": "cpu",
            "checkpoint_every": 2,
            **train,
        },
        "eval": {"every": 2, "samples": 96},
        "data": {
            "source": "threedident",
            "train_dir": str(toy["train"]),
            "test_dir": str(toy["test"]),
            "workers": 0,
        },
    }


# ----- model -------------------------------------------------------------------------------------
def test_resnet18_shapes_and_parameter_count() -> None:
    backbone = ResNet18Backbone()
    assert sum(p.numel() for p in backbone.parameters()) == 11_176_512  # torchvision's, minus fc
    model = make_model(3, 10, "sphere", encoder="resnet18", input_norm="standardize")
    model.eval()
    for size in (16, 32, 64):
        out = model(torch.rand(2, 3, size, size))
        assert out.shape == (2, 10) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    small = make_model(3, 4, "unbounded", encoder="resnet18", input_norm="none", stem="small")
    assert small(torch.rand(3, 3, 16, 16)).shape == (3, 4)


# ----- data --------------------------------------------------------------------------------------
def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="manifest.json: missing"):
        load_image_dataset(tmp_path)
    root = write_toy_dataset(tmp_path / "partial", 10, complete=False)
    with pytest.raises(ConfigError, match="incomplete"):
        load_image_dataset(root)
    root = write_toy_dataset(tmp_path / "bad", 10)
    (root / "images.npy").write_bytes((root / "images.npy").read_bytes()[:200])
    with pytest.raises(ConfigError, match=r"images\.npy") as err:
        load_image_dataset(root)
    assert "\n" not in str(err.value)
    np.save(root / "latents.npy", np.zeros((9, 10), np.float32))
    with pytest.raises(ConfigError, match=r"latents\.npy: expected float \[10, 10\]"):
        load_image_dataset(root)


@pytest.mark.parametrize("mode", ["box", "periodic"])
def test_pairs_are_distinct_snapped_images_with_their_own_latents(tmp_path: Path, mode) -> None:
    ds = load_image_dataset(write_toy_dataset(tmp_path / mode, 150, mode=mode))
    pairs = PairBatches(ds, NoiseLaw("normal", 0.05), batch_size=64, seed=3)
    batch = pairs[5]
    i, j = batch["index"].numpy(), batch["index_tilde"].numpy()
    assert (i != j).all()
    assert np.array_equal(batch["z"].numpy(), ds.latents[i])
    assert np.array_equal(batch["z_tilde"].numpy(), ds.latents[j])
    assert np.array_equal(batch["x"].numpy(), ds.images[i])
    assert np.array_equal(batch["x_tilde"].numpy(), ds.images[j])
    assert batch["x"].dtype == torch.uint8 and batch["x"].shape == (64, 16, 16, 3)
    # Snapping is the exact nearest rendered latent of the query z.
    z_query, _ = pairs.sample_latents(5)
    emb = embed_latents(ds.latents, ds.periodic_mask())
    q = embed_latents(z_query.numpy(), ds.periodic_mask())
    brute = ((q[:, None, :] - emb[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(brute, i)
    # Batches depend only on (seed, index): the same again, and another index differs.
    assert torch.equal(pairs[5]["index"], batch["index"])
    assert not torch.equal(pairs[6]["index"], batch["index"])


@pytest.mark.parametrize("backend", ["faiss", "kdtree"])
def test_a_diagonal_law_snaps_in_its_own_metric(tmp_path: Path, backend) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    ds = load_image_dataset(write_toy_dataset(tmp_path / "box", 300))
    scales = np.array([0.5] * 3 + [0.05] * 3 + [0.5] * 4)
    pairs = PairBatches(
        ds, NoiseLaw("normal", scales.tolist()), batch_size=64, seed=3, backend=backend
    )
    batch = pairs[2]
    i, j = batch["index"].numpy(), batch["index_tilde"].numpy()
    z_query, z_tilde_query = pairs.sample_latents(2)
    # Each query's draw has its coordinate's own scale (truncated to the box).
    assert float((z_tilde_query - z_query)[:, 3:6].abs().max()) < 0.05 * 6
    # Snapped to the nearest rendered latent with every coordinate divided by its scale ...
    weighted = ds.latents / scales

    def nearest(q: np.ndarray, k: int) -> np.ndarray:
        d = (((q / scales)[:, None, :] - weighted[None]) ** 2).sum(-1)
        return np.argsort(d, axis=1, kind="stable")[:, :k]

    assert np.array_equal(nearest(z_query.numpy(), 1)[:, 0], i)
    two = nearest(z_tilde_query.numpy(), 2)
    assert np.array_equal(np.where(two[:, 0] == i, two[:, 1], two[:, 0]), j)
    # ... which is not the plain nearest one: the pairs are closer on the small-scale latents.
    plain = PairBatches(ds, NoiseLaw("normal", 0.5), batch_size=64, seed=3, backend=backend)
    assert not np.array_equal(plain.snap(z_query.numpy(), z_tilde_query.numpy())[0], i)
    gap = np.abs(batch["z"].numpy() - batch["z_tilde"].numpy())
    assert gap[:, 3:6].mean() < 0.5 * gap[:, [0, 1, 2, 6, 7, 8, 9]].mean()


def test_a_diagonal_law_is_refused_on_periodic_images(toy, tmp_path: Path) -> None:
    from clinvert.data.threedident.source import ThreeDIdentSource

    periodic = {
        "train": write_toy_dataset(tmp_path / "ptrain", 60, mode="periodic"),
        "test": write_toy_dataset(tmp_path / "ptest", 40, seed=2, mode="periodic"),
    }
    data = image_config(periodic)
    data["latent"]["conditional"] = {"name": "normal", "scale": [0.1] * 10}
    with pytest.raises(
        ConfigError, match=r"^latent\.conditional\.scale: one scale per latent needs box-mode"
    ):
        ThreeDIdentSource(validate_config(data), torch.device("cpu"))
    with pytest.raises(ValueError, match="needs box-mode latents"):
        PairBatches(load_image_dataset(periodic["train"]), NoiseLaw("normal", [0.1] * 10), 8, 0)
    # On box-mode images it trains.
    data = image_config(toy)
    data["latent"]["conditional"] = {"name": "normal", "scale": [0.3] * 3 + [0.1] * 3 + [0.3] * 4}
    assert ThreeDIdentSource(validate_config(data), torch.device("cpu")).batches.weights is not None


def test_faiss_and_kdtree_agree() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (2000, 10)).astype(np.float32)
    queries = rng.uniform(-1, 1, (300, 10)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = NearestNeighbours(points, "faiss").search(queries, k=2)
        assert torch.get_num_threads() == 2  # faiss shares torch's OpenMP runtime: left alone
    finally:
        torch.set_num_threads(threads)
    b = NearestNeighbours(points, "kdtree").search(queries, k=2)
    assert a.shape == (300, 2) and np.array_equal(a, b)


def test_auto_backend_follows_the_measured_crossover() -> None:
    # benchmarks/bench_neighbours.py: a KD-tree wins in ten dimensions at every size and in the
    # 16 of a periodic embedding from 200k points; faiss's flat search at 40k points x 16
    assert auto_backend(40_000, 10) == "kdtree" and auto_backend(400_000, 10) == "kdtree"
    assert auto_backend(200_000, 16) == "kdtree"
    faiss_or_tree = "kdtree" if importlib.util.find_spec("faiss") is None else "faiss"
    assert auto_backend(40_000, 16) == faiss_or_tree
    assert NearestNeighbours(np.zeros((5, 10), np.float32)).backend == "kdtree"
    with pytest.raises(ValueError, match=r"points must be \[N, m\]"):
        NearestNeighbours(np.zeros(5, np.float32))


@pytest.mark.parametrize("mode", ["box", "periodic"])
@pytest.mark.parametrize("backend", ["faiss", "kdtree"])
def test_anchor_batches_hold_the_pair_batches_anchors(tmp_path: Path, mode, backend) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    ds = load_image_dataset(write_toy_dataset(tmp_path / mode, 150, mode=mode))
    law = NoiseLaw("normal", 0.05)
    pairs = PairBatches(ds, law, batch_size=32, seed=3, backend=backend)
    anchors = PairBatches(ds, law, batch_size=32, seed=3, backend=backend, anchors_only=True)
    for k in (0, 7):
        full, alone = pairs[k], anchors[k]
        assert sorted(alone) == ["index", "x", "z"]
        for key in alone:
            assert torch.equal(alone[key], full[key]), key


def test_supervised_image_runs_load_anchors_only(toy) -> None:
    from clinvert.data.threedident.source import ThreeDIdentSource

    cfg = validate_config(image_config(toy))
    assert not ThreeDIdentSource(cfg, torch.device("cpu")).batches.anchors_only
    sup = json.loads(json.dumps(image_config(toy)))
    sup["train"]["objective"] = "supervised"
    source = ThreeDIdentSource(validate_config(sup), torch.device("cpu"))
    assert source.batches.anchors_only
    x, z = source.labelled(0)
    assert x.shape[0] == z.shape[0] == sup["train"]["batch_size"]


def test_loader_with_workers_yields_the_same_batches(toy) -> None:
    ds = load_image_dataset(toy["train"])
    pairs = PairBatches(ds, NoiseLaw("laplace", 0.1), batch_size=16, seed=0)
    direct = [pairs[k]["index"] for k in range(3, 7)]
    loaded = [b["index"] for b in make_pair_loader(pairs, 3, 7, workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(direct, loaded, strict=True))


# ----- config ------------------------------------------------------------------------------------
def test_config_validation_errors(toy, tmp_path: Path) -> None:
    good = image_config(toy)
    assert validate_config(good).data.source == "threedident"
    cases = [
        (("data", "train_dir"), None, "data.train_dir: required"),
        (("model", "encoder"), "mlp", "model.encoder: source threedident needs an image encoder"),
        (("model", "input_norm"), "whiten", "model.input_norm: whiten"),
        (("latent", "space"), "sphere", None),  # vmf-free sphere: the space itself is refused
    ]
    for (section, key), value, message in cases:
        data = json.loads(json.dumps(good))
        data[section][key] = value
        with pytest.raises(ConfigError) as err:
            validate_config(data)
        assert "\n" not in str(err.value)
        if message:
            assert message in str(err.value)
    with pytest.raises(ConfigError, match="model.encoder: resnet18 encodes images"):
        validate_config({"model": {"encoder": "resnet18"}})
    # Missing directories: one line naming the field, and no run directory created.
    data = image_config(toy)
    data["data"]["test_dir"] = str(tmp_path / "nowhere")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert not (tmp_path / "run").exists()
    # The synthetic config.yaml is unchanged by the image path (no data section, no stem).
    synthetic = validate_config({}).to_dict()
    assert "data" not in synthetic and "stem" not in synthetic["model"]


def test_missing_dir_message(toy, tmp_path: Path, capsys) -> None:
    data = image_config(toy)
    data["data"]["train_dir"] = str(tmp_path / "absent")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clinvert: error: data.train_dir: dataset directory not found")
    assert len(err.splitlines()) == 1


# ----- end to end --------------------------------------------------------------------------------
def test_train_on_images_writes_the_run_directory_and_resumes_exactly(
    toy, tmp_path: Path, capsys
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(image_config(toy)))
    assert main(["train", str(cfg), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    run = tmp_path / "full"
    for name in ("config.yaml", "metrics.jsonl", "result.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    png = (run / "r2_per_factor.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 4 and result["mixing"] is None
    final = result["final"]
    assert list(final["r2_per_factor"]) == list(FACTORS)
    assert list(final["mcc_per_factor"]) == list(FACTORS)
    assert all(math.isfinite(v) for v in final["r2_per_factor"].values())
    assert result["identity"]["baseline"].startswith("linear fit on")
    assert result["eval_samples"] == 96 and result["data"]["factors"] == list(FACTORS)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows[-1]["r2_per_factor"] == final["r2_per_factor"]  # the curve of every factor

    # Stop at step 2, resume with loader workers to 4: the same numbers as the straight run.
    short = image_config(toy, steps=2)
    cfg.write_text(yaml.safe_dump(short))
    assert main(["train", str(cfg), "--out", str(tmp_path / "part"), "--quiet"]) == 0
    text = (tmp_path / "part" / "config.yaml").read_text().replace("workers: 0", "workers: 1")
    (tmp_path / "part" / "config.yaml").write_text(text)
    assert main(["train", "--resume", str(tmp_path / "part"), "--steps", "4", "--quiet"]) == 0
    part = json.loads((tmp_path / "part" / "result.json").read_text())
    assert part["steps"] == 4 and part["final"] == final

    # The table of finished runs: one line per run, its per-factor R², the data it was trained on.
    out = tmp_path / "table.md"
    assert main(["threedident", "table", str(run), str(tmp_path / "part"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert all(f in lines[0] for f in FACTORS)
    assert "| 4 × 8 | 0 |" in lines[2] and "200 / 96 at" in lines[2]  # steps × batch, seed
    assert lines[1].count("|") == lines[0].count("|")  # the separator spans every column
    assert f"| {final['r2_per_factor']['pos_x']:.3f} |" in lines[2]
    assert lines[2].endswith("✗ short |") or lines[2].endswith("✓ |")
    # then the kNN probe of both runs (a diagnostic beside the affine R²)
    assert list(final["knn_r2_per_factor"]) == list(FACTORS)
    assert lines[4] == "" and lines[5].startswith("kNN R² per factor") and len(lines) == 11
    assert lines[9].startswith("| full | ") and lines[10].startswith("| part | ")
    assert main(["threedident", "table", str(tmp_path / "nothing")]) == 2
    # a run started from another's weights says so (its steps are its own alone)
    warm = tmp_path / "warm"
    shutil.copytree(run, warm)
    saved = yaml.safe_load((warm / "config.yaml").read_text())
    saved["train"]["init_from"] = str(run)
    (warm / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["threedident", "table", str(warm), "--out", str(out)]) == 0
    assert "(started from the weights of full)" in out.read_text().splitlines()[2]
    # each factor's curve over training, both runs in one picture
    png = tmp_path / "curves.png"
    assert main(["threedident", "curves", str(run), str(tmp_path / "part"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["threedident", "curves", str(tmp_path / "nothing"), "--out", str(png)]) == 2
    # a run trained with a plugin encoder that is not importable here still plots (no code needed)
    plugged = tmp_path / "plugged"
    plugged.mkdir()
    shutil.copy(run / "metrics.jsonl", plugged / "metrics.jsonl")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["plugins"], saved["model"]["encoder"] = ["gone/probe_encoders.py"], "gone-encoder"
    (plugged / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["threedident", "curves", str(plugged), "--out", str(png)]) == 0
    # the rotations' R² per bin of |beta|: five bins and the whole, whose R² is the run's own
    gimbal = tmp_path / "gimbal.md"
    assert main(["threedident", "gimbal", str(run), "--out", str(gimbal)]) == 0
    rows = gimbal.read_text().splitlines()
    assert len(rows) == 2 + 6 and rows[-2].startswith("| full | [0.9, 1] | ")
    whole = [float(c.strip(" *")) for c in rows[-1].split("|")[4:7]]
    ours = [final["r2_per_factor"][f] for f in ("rot_alpha", "rot_beta", "rot_gamma")]
    assert whole == pytest.approx(ours, abs=5.1e-4)  # printed to three decimals
    assert rows[-1].startswith("| full | all | 48 |")  # the scored half of the 96
    assert main(["threedident", "gimbal", str(tmp_path / "nothing")]) == 2
    # per factor the affine R² (the run's own) and the strongest fold
    folds = tmp_path / "folds.md"
    assert main(["threedident", "folds", str(run), "--out", str(folds)]) == 0
    rows = folds.read_text().splitlines()
    assert rows[0] == "| run | factor | affine R² | strongest fold | its R² |"
    assert len(rows) == 2 + 10 and [r.split("|")[2].strip() for r in rows[2:]] == list(FACTORS)
    affine = [float(r.split("|")[3]) for r in rows[2:]]
    assert affine == pytest.approx([final["r2_per_factor"][f] for f in FACTORS], abs=5.1e-4)
    assert main(["threedident", "folds", str(tmp_path / "nothing")]) == 2
    # every fold among the named factors: the diagonal and the strongest fold are those above
    matrix = tmp_path / "matrix.md"
    assert main(["threedident", "folds", str(run), "--matrix", "all", "--out", str(matrix)]) == 0
    cells = [[float(c) for c in r.split("|")[3:-1]] for r in matrix.read_text().splitlines()[2:]]
    assert len(cells) == 10 and all(len(row) == 10 for row in cells)
    strongest = [float(r.split("|")[5]) for r in rows[2:]]
    assert [max(row) for row in cells] == pytest.approx(strongest, abs=1e-9)
    assert (
        main(["threedident", "folds", str(run), "--matrix", "rotations", "--out", str(matrix)]) == 0
    )
    rows3 = matrix.read_text().splitlines()
    assert rows3[0] == (
        "| run | factor j | z_j × sign(rot_alpha) | z_j × sign(rot_beta) | z_j × sign(rot_gamma) |"
    )
    assert [r.split("|")[2].strip() for r in rows3[2:]] == ["rot_alpha", "rot_beta", "rot_gamma"]
    assert main(["threedident", "folds", str(run), "--matrix", "rot_alpha,spin"]) == 2
    assert "unknown factor 'spin'" in capsys.readouterr().err
    # the encoder on its training images and its held-out ones: the test row is the run's own R²
    probe = tmp_path / "probe.md"
    assert main(["threedident", "probe", str(run), "--out", str(probe)]) == 0
    rows = [r for r in probe.read_text().splitlines() if r.startswith("| full | ")]
    assert [r.split("|")[2].split()[0] for r in rows] == ["train", "test"]
    assert [int(r.split("|")[3]) for r in rows] == [96, 96]  # eval.samples of each split
    cells = [c.strip() for c in rows[1].split("|")[6:16]]
    affine = [float(c.split(" / ")[0]) for c in cells]
    assert affine == pytest.approx([final["r2_per_factor"][f] for f in FACTORS], abs=5.1e-4)
    knn = [float(c.split(" / ")[1]) for c in cells]
    assert knn == pytest.approx([final["knn_r2_per_factor"][f] for f in FACTORS], abs=5.1e-4)
    assert main(["threedident", "probe", str(run), "--samples", "3"]) == 2
    # any other dataset in place of the run's own (here its test set again: the same row)
    test_dir = yaml.safe_load((run / "config.yaml").read_text())["data"]["test_dir"]
    assert main(["threedident", "probe", str(run), "--data", test_dir, "--out", str(probe)]) == 0
    other = [r for r in probe.read_text().splitlines() if r.startswith("| full | ")]
    assert len(other) == 1 and other[0].split("|")[6:] == rows[1].split("|")[6:]
    assert main(["threedident", "probe", str(run), "--data", str(tmp_path / "nothing")]) == 2
    # an MLP fit on the training images' codes, scored on the held-out ones
    assert main(["threedident", "probe", str(run), "--mlp", "200", "--out", str(probe)]) == 0
    text = probe.read_text()
    assert "fit on the codes of the first 200 training images" in text
    mlp = [r for r in text.splitlines() if r.startswith("| full | ")][2:]
    assert len(mlp) == 1 and mlp[0].split("|")[2].strip().startswith("test")
    assert all(math.isfinite(float(c)) for c in mlp[0].split("|")[4:15])
    assert main(["threedident", "probe", str(run), "--mlp", "3"]) == 2
    assert main(["threedident", "probe", str(tmp_path / "nothing")]) == 2
    # label-free agreement: the resumed run's encoder is the straight run's (every direction read
    # at R² 1); one run alone, or runs tested on different folders without --data, are refused
    # in one line
    agree = tmp_path / "agree.md"
    part = tmp_path / "part"
    assert main(["threedident", "agree", str(run), str(part), "--out", str(agree)]) == 0
    lines = agree.read_text().splitlines()
    assert lines[0].startswith("Label-free agreement on 96 images")
    pair = [c.strip() for c in lines[4].split("|")[1:-1]]
    assert pair[:2] == [str(run), str(part)] and pair[6] == "0 / 0"
    assert [float(c) for c in pair[2:6] + pair[7:8]] == [1.0] * 5 and pair[8] == "—"
    # a run started from another's weights shares its start (and its folds): the table says so
    assert main(["threedident", "agree", str(run), str(warm), "--out", str(agree)]) == 0
    assert agree.read_text().splitlines()[4].endswith("| 1.000 | full |")
    assert lines[-2:] == [f"| {run} | {part} | 1.000 |", f"| {part} | {run} | 1.000 |"]
    assert main(["threedident", "agree", str(run)]) == 2
    assert "need at least two runs" in capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    saved["data"]["test_dir"] = str(toy["train"])
    (moved / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["threedident", "agree", str(run), str(moved)]) == 2
    assert "data.test_dir:" in capsys.readouterr().err
    assert main(["threedident", "agree", str(run), str(moved), "--data", test_dir]) == 0
    assert main(["threedident", "agree", str(run), str(tmp_path / "nothing")]) == 2

    # The run directory as a fitted estimator: the dataset's uint8 [N, S, S, 3] images in, the codes
    # the run scored out (its final R² again).
    from clinvert import load

    encoder = load(run)
    test = load_image_dataset(toy["test"])
    codes = encoder.transform(np.asarray(test.images))
    assert codes.shape == (96, 10)
    assert encoder.score(np.asarray(test.images), test.latents) == pytest.approx(
        final["r2"], abs=1e-5
    )


def test_periodic_scores_use_the_angle_embedding(tmp_path: Path) -> None:
    from clinvert.data.threedident.source import ThreeDIdentSource

    dirs = {
        "train": write_toy_dataset(tmp_path / "train", 60, mode="periodic", seed=1),
        "test": write_toy_dataset(tmp_path / "test", 80, mode="periodic", seed=2),
    }
    data = ThreeDIdentSource(validate_config(image_config(dirs)), torch.device("cpu"))
    z = data.z_test.numpy()
    perfect = data.score(torch.from_numpy(embed_latents(z, data.test.periodic_mask())))
    assert list(perfect["r2_per_factor"]) == list(FACTORS)
    assert perfect["r2"] > 0.999 and min(perfect["r2_per_factor"].values()) > 0.999
    assert list(perfect["knn_r2_per_factor"]) == list(FACTORS)
    raw = data.score(torch.from_numpy(z))  # angles as numbers: the wrap-around is not affine
    assert raw["r2_per_factor"]["rot_alpha"] < 0.9 and raw["r2_per_factor"]["pos_x"] > 0.999


def test_periodic_supervised_ceiling_regresses_cos_and_sin(tmp_path: Path, capsys) -> None:
    from clinvert.data.threedident.source import ThreeDIdentSource

    dirs = {
        "train": write_toy_dataset(tmp_path / "train", 60, mode="periodic", seed=1),
        "test": write_toy_dataset(tmp_path / "test", 32, mode="periodic", seed=2),
    }
    raw = image_config(dirs, objective="supervised", steps=2, batch_size=4)
    raw["model"].update(encoder="conv", output_dim=16)
    raw["eval"]["samples"] = 32
    data = ThreeDIdentSource(validate_config(raw), torch.device("cpu"))
    assert data.supervised_width() == 16  # 3 positions and beta, then 6 cosines and 6 sines
    _, z = data.labelled(0)
    batch = data.batches[0]
    mask = data.train.periodic_mask()
    assert torch.equal(z, torch.from_numpy(embed_latents(batch["z"].numpy(), mask)))
    config = tmp_path / "supervised.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    narrow = tmp_path / "narrow.yaml"
    raw["model"]["output_dim"] = 10
    narrow.write_text(yaml.safe_dump(raw))
    assert main(["train", str(narrow), "--out", str(tmp_path / "narrow-run")]) == 2
    err = capsys.readouterr().err
    assert "model.output_dim: the supervised objective regresses the 16 latent columns" in err
    assert not (tmp_path / "narrow-run").exists()


# ----- the released 3DIdent layout -----------------------------------------------------------------
def write_released(root: Path, n: int, size: int = 16, seed: int = 0) -> Path:
    """A folder in exactly the paper's released layout: raw_latents.npy and images/<i>.png, i
    zero-padded to ceil(log10(n)) digits, made from the toy renderer's images."""
    from PIL import Image

    toy = write_toy_dataset(root.parent / f"{root.name}-toy", n, size=size, seed=seed)
    latents = np.load(toy / "latents.npy")
    images = np.load(toy / "images.npy")
    (root / "images").mkdir(parents=True)
    np.save(root / "raw_latents.npy", latents.astype(np.float64))
    width = math.ceil(math.log10(n))
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / "images" / f"{i:0{width}d}.png")
    return root


def test_released_layout_is_detected_and_read_as_the_pngs_say(tmp_path: Path) -> None:
    root = write_released(tmp_path / "train", 120, seed=1)
    assert sorted(p.name for p in (root / "images").iterdir())[:2] == ["000.png", "001.png"]
    ds = load_image_dataset(root)
    toy = load_image_dataset(tmp_path / "train-toy")
    assert ds.manifest["format"] == "3dident-released" and ds.size == 16 and len(ds) == 120
    assert ds.factors == list(FACTORS) and ds.mode == "box"
    np.testing.assert_array_equal(ds.images[[3, 0, 119]], np.asarray(toy.images)[[3, 0, 119]])
    np.testing.assert_array_equal(ds.images[5:8], np.asarray(toy.images)[5:8])
    np.testing.assert_array_equal(ds.latents, toy.latents)


def test_malformed_released_folders_are_refused_in_one_line(tmp_path: Path) -> None:
    root = write_released(tmp_path / "bad", 12, seed=3)
    (root / "images" / "07.png").unlink()
    with pytest.raises(ConfigError, match=r"1 of 12 images missing \(first: 07.png; .* 2 digits"):
        load_image_dataset(root)
    (root / "images" / "7.png").write_bytes((root / "images" / "06.png").read_bytes())
    with pytest.raises(ConfigError, match="07.png"):  # wrong padding does not count
        load_image_dataset(root)
    (root / "images" / "7.png").rename(root / "images" / "07.png")
    np.save(root / "raw_latents.npy", np.zeros((12, 9)))
    with pytest.raises(ConfigError, match=r"raw_latents.npy: expected float \[N, 10\]"):
        load_image_dataset(root)
    np.save(root / "raw_latents.npy", np.full((12, 10), 2.0))
    with pytest.raises(ConfigError, match=r"outside \[-1, 1\]"):
        load_image_dataset(root)
    (root / "raw_latents.npy").unlink()
    with pytest.raises(ConfigError, match=r"raw_latents.npy: missing") as err:
        load_image_dataset(root)
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a clinvert-3dident dataset .* nor the released"):
        load_image_dataset(tmp_path / "empty")


def test_released_layout_trains_at_another_size_with_workers(tmp_path: Path) -> None:
    dirs = {
        "train": write_released(tmp_path / "train", 120, size=24, seed=1),
        "test": write_released(tmp_path / "test", 40, size=24, seed=2),
    }
    data = image_config(dirs, steps=2)
    data["data"].update({"size": 16, "workers": 1})
    data["eval"] = {"every": 2, "samples": 40}
    cfg = tmp_path / "released.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "finished" and result["data"]["size"] == 16
    assert result["data"]["train"]["backend"] == "released" and result["data"]["train"]["n"] == 120
    assert all(math.isfinite(v) for v in result["final"]["r2_per_factor"].values())
