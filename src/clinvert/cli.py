"""The ``clinvert`` command.

clinvert train CONFIG.yaml --out DIR [--set key.path=value ...] [--force]
clinvert train --resume DIR [--steps N] [--stop-at STEP]
clinvert demo [--out DIR]
clinvert config [CONFIG.yaml] [--set key.path=value ...]
"""

from __future__ import annotations

import argparse
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import NoReturn

from clinvert.config import (
    ConfigError,
    check_data_dirs,
    describe_model,
    describe_process,
    load_config,
    read_run_config,
    validate_config,
)

EPILOG_TRAIN = """\
CONFIG is a YAML file, or the name of a config that ships with clinvert (`clinvert configs list`;
a unique end of the name is enough, e.g. table2/box-uniform-laplace0.05__box-l1).

examples:
  clinvert train examples/sphere-uniform-vmf10__sphere-cosine-tau0.1 --out runs/sphere
  clinvert train examples/box-uniform-laplace0.1__box-l1 --out runs/box \\
      --set train.steps=2000 --set latent.conditional.scale=0.1
  clinvert train --resume runs/box            # continue from runs/box/checkpoint.pt
  clinvert train my-config.yaml --out runs/a --stop-at 2000   # pause after step 2000 of the
      schedule; `--resume runs/a` later ends exactly like an uninterrupted run
  clinvert train table2/box-uniform-laplace0.05__box-l1 --profile quick \\
      --out runs/l1-quick                      # a table row at its quick (2-core) size
  clinvert train table2/box-uniform-laplace0.05__box-l1 --profile quick --nproc 2 \\
      --out runs/l1-2proc                      # two processes, negatives gathered across them
  clinvert train my-config.yaml --out runs/mine   # your own file (clinvert configs export DIR)

The run directory receives config.yaml (resolved), metrics.jsonl (one line per evaluation),
result.json (final scores on fresh samples, identity baseline, resolved config, version, commit) and
checkpoint.pt. Your own arrays train with data: {source: arrays, x: x.npy, x_positive: x_pos.npy}.
"""


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one config field (value parsed as YAML); repeatable, e.g. --set model.tau=0.1",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one ``--help`` away) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"clinvert: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``clinvert`` command."""
    parser = _Parser(
        prog="clinvert",
        description=(
            "Contrastive learning inverts the data generating process: sample latents, mix them, "
            "train an encoder with InfoNCE, and measure how well it inverts the mixing (R^2, MCC)."
        ),
        epilog="Run 'clinvert COMMAND --help' for the options of one command.",
    )
    parser.add_argument(
        "--version", action="version", version=f"clinvert {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="train one run from a YAML config into a run directory",
        description="Train one run and write its run directory.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (omit with --resume)")
    p.add_argument("--out", help="run directory to write")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--steps", type=int, help="with --resume: train to this many steps in total")
    p.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help=(
            "pause after this step with a checkpoint (the schedule still spans train.steps); "
            "--resume DIR continues exactly as if never paused"
        ),
    )
    p.add_argument("--force", action="store_true", help="overwrite a finished run in --out")
    p.add_argument("--profile", help="merge this profile of the config first (e.g. quick)")
    p.add_argument(
        "--recipe",
        metavar="NAME",
        help=(
            "train the phases of the config's recipe NAME into OUT/<i>-<phase>, each from the "
            "weights of the one before; the same command again continues where it stopped"
        ),
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        help=(
            "train with N processes on this machine (data parallel, negatives gathered across "
            "them: gloo on CPU, nccl on CUDA); under torchrun the launcher's WORLD_SIZE is used"
        ),
    )
    _add_set(p)

    p = sub.add_parser(
        "demo",
        help="train the built-in demo and print identity vs learned R^2 / MCC",
        description=(
            "Train the built-in demo (box latents, Laplace conditional, L1 InfoNCE with a box "
            "output; a few minutes on 2 CPU cores) and print the identity baseline next to the "
            "learned scores."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_set(p)

    p = sub.add_parser(
        "reproduce",
        help="reproduce a table of the paper (rows x seeds, resumable)",
        description=(
            "Run every row of a table (the shipped configs synthetic/TABLE/*.yaml, kitti/*.yaml "
            "for kitti: `clinvert configs list`) for every seed, with the row's objective "
            "(InfoNCE, or SlowVAE) and the supervised baseline, as ordinary run directories under "
            "OUT/runs/. Finished runs are skipped and interrupted ones resumed, so running the same "
            "command again continues where it stopped. Writes OUT/TABLE.json and OUT/TABLE.md."
        ),
        epilog=(
            "examples:\n"
            "  clinvert reproduce table2 --quick --seeds 3 --out results/quick\n"
            "  clinvert reproduce table1 --quick --rows sphere-uniform-vmf1__sphere-cosine --out r\n"
            "  clinvert reproduce table1 --backend ray --address auto --out results/paper\n"
            "  clinvert reproduce kitti --quick --seeds 3 --data data/kitti/walkers-laplace.pickle "
            "--out results/kitti\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", choices=["table1", "table2", "kitti"], help="which table")
    p.add_argument(
        "--data",
        help="kitti: the KITTI Masks pickle every row reads (the public file or a generated one)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help="use each row's 'quick' profile")
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="use each row's profile NAME (e.g. kitti's 'long'; --quick is --profile quick)",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds per row (default 5)")
    p.add_argument(
        "--ceiling-seeds",
        type=int,
        help="run the supervised ceiling for the first N seeds only (default: every seed)",
    )
    p.add_argument("--rows", help="comma-separated row names (default: all rows)")
    p.add_argument("--backend", default="local", help="local (processes, default) or ray")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument(
        "--workers",
        type=int,
        help="local worker processes (default: one per core; OMP_NUM_THREADS caps the cores used)",
    )
    p.add_argument(
        "--configs",
        help="folder holding table1/ and table2/ row configs (default: the shipped ones)",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: aggregate the finished runs and list the others as missing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "headline",
        help="quick reproduction of the headline rows, with report (what `make run` runs)",
        description=(
            "Reproduce the headline rows with their 'headline' profile (the quick recipe cut to "
            "the steps where each row meets its claims): the matched sphere/vMF row (R^2), the "
            "matched box/Laplace/L1 row (MCC) and the box/Normal/L2 rows with the box model (the "
            "box pins the axes: MCC high) and the unbounded model (the Gaussian exception: high "
            "R^2, low MCC). All runs in one pool, longest first; resumable; then writes the "
            "tables and the report. The README's 'What to expect' gives the measured time."
        ),
    )
    p.add_argument(
        "--out", default="runs/headline", help="output directory (default runs/headline)"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per row (default 1)")
    p.add_argument(
        "--ceiling-seeds",
        type=int,
        default=0,
        help="also run the supervised ceiling for the first N seeds (default 0: none)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="local worker processes (default: one per core; OMP_NUM_THREADS caps the cores used)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "report",
        help="render tables and plots of a reproduction directory into report.html",
        description=(
            "Render OUT/report.html (self-contained) and PNG plots from a reproduction directory: "
            "per-row bars against identity and supervised, training curves, and a scatter of true "
            "versus recovered latents for one run per table."
        ),
    )
    p.add_argument("dir", help="directory written by 'clinvert reproduce'")

    p = sub.add_parser(
        "alignment",
        help="how axis-aligned finished runs' codes are, against random codes (chance level)",
        description=(
            "Re-encode the test set of finished runs (from their checkpoint.pt) and print MCC, "
            "affine R^2 and the alignment score (DCI disentanglement of a linear fit, which extra "
            "outputs cannot inflate), next to the same scores of random linear codes of the same "
            "latents with as many outputs: the chance level an MCC must beat. With 3 latents and "
            "10 outputs (KITTI Masks) random codes reach MCC 0.9."
        ),
    )
    p.add_argument("runs", nargs="+", help="run directories, or folders to search for them")
    p.add_argument("--trials", type=int, default=100, help="random codes per test set (100)")
    p.add_argument("--out", help="also write the per-run records as JSON and the table as .md")
    p.add_argument("--quiet", action="store_true", help="no line per run")

    p = sub.add_parser(
        "config",
        help="validate a config and print it fully resolved",
        description="Validate a config (or the defaults) and print the full resolved YAML.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (default: built-in defaults)")
    p.add_argument("--profile", help="merge this profile of the config (e.g. quick)")
    p.add_argument(
        "--recipe",
        metavar="NAME",
        help="print every phase of the config's recipe NAME, as `train --recipe` would run it",
    )
    p.add_argument("--out", default="OUT", help="with --recipe: the folder its phases would use")
    _add_set(p)
    _add_configs(sub)
    _add_threedident(sub)
    _add_kitti(sub)
    return parser


def _version() -> str:
    from clinvert.provenance import version

    return version()


def _add_configs(sub: argparse._SubParsersAction) -> None:
    """The ``configs`` command group (``list``, ``show``, ``export``)."""
    p = sub.add_parser(
        "configs",
        help="list, show or copy the configs that ship with clinvert",
        description=(
            "The configs that ship inside the package: the paper's tables (synthetic/table1, "
            "synthetic/table2), fast presets, 3DIdent and KITTI rows. `train` and `config` take "
            "their names as well as file paths."
        ),
        epilog=(
            "examples:\n"
            "  clinvert configs list synthetic/table2\n"
            "  clinvert configs show table1/sphere-uniform-vmf10__sphere-cosine-tau0.1\n"
            "  clinvert configs export my-configs\n"
            "  clinvert train table2/box-uniform-laplace0.05__box-l1 --profile quick --out runs/l1\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = p.add_subparsers(dest="configs_command", metavar="ACTION", required=True)
    q = csub.add_parser("list", help="names of the shipped configs")
    q.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    q = csub.add_parser("show", help="print one shipped config as it is written")
    q.add_argument("name", help="its name, or a unique end of it (e.g. table1/ROW)")
    q = csub.add_parser("export", help="copy the shipped configs into a folder to edit them")
    q.add_argument("dir", help="destination folder (created; existing files are kept)")
    q.add_argument("--prefix", default="", help="only names starting with this")


def _add_kitti(sub: argparse._SubParsersAction) -> None:
    """The ``kitti`` command group (``fetch``, ``generate``, ``stats``)."""
    p = sub.add_parser(
        "kitti",
        help="KITTI Masks: fetch the public file, generate walking masks, transition statistics",
        description="KITTI Masks (Klindt et al. 2021): pedestrian mask sequences, three factors.",
    )
    group = p.add_subparsers(dest="kitti_command", metavar="ACTION", required=True)
    f = group.add_parser(
        "fetch",
        help="download kitti_peds_v2.pickle (Zenodo 3931823) with its checksum",
        description=(
            "Download the public KITTI Masks pickle into DIR, check its MD5 and format. Without a "
            "network, say in one line what to download and where to place it."
        ),
    )
    f.add_argument("--out", required=True, help="directory to place kitti_peds_v2.pickle in")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    g = group.add_parser(
        "generate",
        help="write walking-pedestrian mask sequences in the KITTI Masks format",
        description=(
            "Generate mask sequences of walking silhouettes whose factors (position y, x and size) "
            "follow reflected random walks with Laplace (sparse) or Normal steps, and write them "
            "as a pickle in the published KITTI Masks format (latents measured on the masks)."
        ),
        epilog=(
            "example:\n  clinvert kitti generate --out data/kitti/walkers-laplace.pickle\n"
            "  clinvert kitti generate --out data/kitti/walkers-normal.pickle --transition normal\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--out", required=True, help="pickle file to write")
    g.add_argument("--sequences", type=int, default=400, help="sequences (default 400)")
    g.add_argument("--length", type=int, default=50, help="frames per sequence (default 50)")
    g.add_argument("--transition", default="laplace", help="laplace (default) or normal")
    g.add_argument("--scale", type=float, default=0.05, help="step std in factor units (0.05)")
    g.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    s = group.add_parser(
        "stats",
        help="transition statistics (std, kurtosis) of a KITTI Masks file's factors",
        description=(
            "Print the standard deviation and kurtosis (3 for a Gaussian, 6 for a Laplace) of "
            "each factor's change over DT frames, pooled over the sequences of a pickle."
        ),
    )
    s.add_argument("path", help="KITTI Masks pickle (published or generated)")
    s.add_argument("--delta-t", type=int, default=1, help="frame gap (default 1)")


def _cmd_kitti(args: argparse.Namespace) -> int:
    from clinvert.data.kitti.masks import FACTORS, load_kitti_masks, write_kitti_masks
    from clinvert.data.kitti.walkers import WalkerSpec, make_walkers, transition_stats

    if args.kitti_command == "fetch":
        from clinvert.data.kitti.fetch import fetch_kitti_masks

        print(f"kitti: {fetch_kitti_masks(args.out, progress=not args.quiet)}")
        return 0
    if args.kitti_command == "generate":
        spec = WalkerSpec(
            sequences=args.sequences,
            length=args.length,
            transition=args.transition,
            scale=args.scale,
            seed=args.seed,
        )
        spec.check()
        if Path(args.out).is_dir():
            raise ConfigError(f"--out: {args.out} is a directory; name the pickle file to write")
        masks, latents = make_walkers(spec)
        path = write_kitti_masks(args.out, masks, latents)
        stats = transition_stats(latents)
        kurt = ", ".join(f"{n} {k:.2f}" for n, k in zip(FACTORS, stats["kurtosis"], strict=True))
        frames = sum(map(len, masks))
        print(f"kitti: {path}: {len(masks)} sequences, {frames} frames; transition kurtosis {kurt}")
        return 0
    if isinstance(args.delta_t, bool) or args.delta_t < 1:
        raise ConfigError(f"delta_t: must be an integer >= 1, got {args.delta_t}")
    data = load_kitti_masks(args.path)
    stats = transition_stats(data.latents, args.delta_t)
    print(f"{args.path}: {len(data.masks)} sequences, {data.frames} frames, delta_t {args.delta_t}")
    print("factor    std       kurtosis")
    for name, sd, k in zip(FACTORS, stats["std"], stats["kurtosis"], strict=True):
        print(f"{name:<9} {sd:<9.3f} {k:.2f}")
    return 0


def _add_threedident(sub: argparse._SubParsersAction) -> None:
    """The ``threedident`` command group (``render``, ``table``, ``grid``, ``curves``, ``gimbal``,
    ``folds``, ``agree``, ``probe``, ``objective``)."""
    p = sub.add_parser(
        "threedident",
        help="3DIdent data: render the teapot dataset, tabulate runs",
        description="3DIdent: images of the Utah teapot rendered from ten latent factors.",
    )
    group = p.add_subparsers(dest="threedident_command", metavar="ACTION", required=True)
    r = group.add_parser(
        "render",
        help="render (or resume rendering) a dataset directory",
        description=(
            "Render N images of S x S pixels into DIR (manifest.json, latents.npy, images/*.png, "
            "images.npy). Resumable: running the same command again renders only what is missing."
        ),
        epilog=(
            "examples:\n"
            "  clinvert threedident render --n 1000 --size 64 --out data/3dident-preview\n"
            "  clinvert threedident render --n 100 --size 64 --backend cycles --samples 8 \\\n"
            "      --out data/3dident-cycles      # needs 'make render-env' (Blender's bpy)\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--n", type=int, required=True, help="number of images")
    r.add_argument("--size", type=int, required=True, help="image side in pixels")
    r.add_argument("--out", required=True, help="dataset directory")
    r.add_argument("--backend", default="preview", help="preview (default, torch) or cycles")
    r.add_argument(
        "--mode",
        default="box",
        help="latent coordinates: box (default) or periodic (alpha, gamma, spotlight, hues "
        "on full circles, beta on a half turn)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    r.add_argument("--samples", type=int, help="cycles: samples per pixel (default 8)")
    r.add_argument(
        "--workers",
        type=int,
        help="cycles: Blender processes, one thread each (default: one per available core)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    t = group.add_parser(
        "table",
        help="markdown table of finished 3DIdent runs (R², MCC, R² per factor)",
        description=(
            "Print (or write with --out) a markdown table of finished 3DIdent run directories: "
            "overall R² and MCC, R² per factor, the mean over factors, the images each run was "
            "trained on (count, size, renderer) and whether positions reach R² 0.9 and the mean 0.8."
        ),
        epilog="example:\n  clinvert threedident table runs/3dident-box runs/3dident-sphere --out table.md\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with result.json)")
    t.add_argument("--out", help="write the table to this file (default: print it)")
    g = group.add_parser(
        "grid",
        help="PNG grid of each factor swept from -1 to +1 alone, renderers side by side",
        description=(
            "Render each of the ten factors swept from -1 to +1 (the others fixed) with each "
            "backend and write one PNG: a row per factor, a block of columns per backend."
        ),
        epilog=(
            "example:\n  clinvert threedident grid --out grid.png --backends preview,cycles"
            "      # cycles needs 'make render-env'\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--out", required=True, help="PNG file to write")
    g.add_argument("--backends", default="preview", help="comma-separated: preview, cycles")
    g.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    g.add_argument("--values", type=int, default=5, help="values per factor (default 5)")
    c = group.add_parser(
        "curves",
        help="PNG of each factor's R² over training, one line per run",
        description=(
            "Plot held-out R² per factor against training samples seen (steps × batch) from the "
            "metrics.jsonl of 3DIdent run directories: one panel per factor, one line per run."
        ),
        epilog="example:\n  clinvert threedident curves runs/a runs/b --out curves.png\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with metrics.jsonl)")
    c.add_argument("--out", required=True, help="PNG file to write")
    gb = group.add_parser(
        "gimbal",
        help="R² of the three rotations per bin of |beta| (distance from gimbal lock)",
        description=(
            "Re-apply each finished 3DIdent run's encoder to its held-out images and print the "
            "held-out R² of rot_alpha, rot_beta and rot_gamma per bin of |beta|: at beta = pi/2 "
            "the Euler angles alpha and gamma turn about one axis and only their sum or "
            "difference shows in the image (gimbal lock); near it they are hard to tell apart. "
            "Latent |beta| = 1 is pi/2 on scene 2, pi/3 since scene 3."
        ),
        epilog="example:\n  clinvert threedident gimbal runs/a runs/b --out gimbal.md\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gb.add_argument("runs", nargs="+", metavar="RUN", help="finished 3DIdent run directories")
    gb.add_argument("--out", help="write the table to this file (default: print it)")
    fo = group.add_parser(
        "folds",
        help="per factor: affine R² and the strongest fold z_j × sign(z_k) a code holds",
        description=(
            "Re-apply each 3DIdent run's encoder to its held-out images and print, per factor j, "
            "the affine R² and the factor k for which z_j × sign(z_k) (abs(z_j) when k = j) is "
            "read best by an affine fit, with that R². An affine code scores about 0 there; a "
            "factor low in affine R² but high in a fold is held linearly on each side of k's "
            "middle and flipped between them."
        ),
        epilog=(
            "examples:\n  clinvert threedident folds runs/a runs/b --out folds.md\n"
            "  clinvert threedident folds runs/a --matrix rotations\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fo.add_argument("runs", nargs="+", metavar="RUN", help="3DIdent run directories (box mode)")
    fo.add_argument("--out", help="write the table to this file (default: print it)")
    fo.add_argument(
        "--matrix",
        metavar="FACTORS",
        help=(
            "print every fold z_j × sign(z_k) among these factors instead of the strongest: "
            "'rotations', 'all' or comma-separated names (rot_alpha,rot_gamma)"
        ),
    )
    ag = group.add_parser(
        "agree",
        help="label-free: how well an affine map takes one run's code to another's",
        description=(
            "Encode the same held-out images with every 3DIdent run (finished or paused) and, for "
            "each pair, print the held-out R² of an affine fit from one code to each whitened "
            "direction of the other, both ways (worst and mean). Runs that each invert the "
            "generator up to an affine map agree on every direction; a run holding a factor "
            "folded leaves one direction near 0. No latent is read: the check works without "
            "ground truth. Compare runs trained from independent starts (runs sharing first "
            "weights share their folds)."
        ),
        epilog=(
            "examples:\n  clinvert threedident agree runs/seed0 runs/seed1 runs/seed2\n"
            "  clinvert threedident agree runs/a runs/b --data data/s3/test64 --samples 2000\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ag.add_argument("runs", nargs="+", metavar="RUN", help="3DIdent run directories (two or more)")
    ag.add_argument(
        "--samples", type=int, help="images encoded (default: the runs' smallest eval.samples)"
    )
    ag.add_argument(
        "--data", metavar="DIR", help="encode this dataset instead of the runs' common test set"
    )
    ag.add_argument("--out", help="write the table to this file (default: print it)")
    pb = group.add_parser(
        "probe",
        help="affine and kNN R² per factor of a run's encoder on its training and held-out images",
        description=(
            "Re-apply each 3DIdent run's encoder (its checkpoint, finished or not) to the first "
            "images of its training set and of its held-out set, and print the affine and kNN R² "
            "per factor on both. A factor low on the training images too is not learnt (not "
            "overfitted); one high there and low held out is learnt by heart; kNN high where the "
            "affine fit is low means the factor is in the code, but not linearly."
        ),
        epilog=(
            "examples:\n  clinvert threedident probe runs/a runs/b --samples 2000 --out probe.md\n"
            "  clinvert threedident probe runs/a --data data/s3/cycles-test64   # another renderer\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pb.add_argument("runs", nargs="+", metavar="RUN", help="3DIdent run directories")
    pb.add_argument(
        "--samples", type=int, help="images scored per split (default: the run's eval.samples)"
    )
    pb.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="score on this dataset directory instead of the run's own two (repeatable; e.g. "
        "images of another renderer)",
    )
    pb.add_argument(
        "--mlp",
        type=int,
        metavar="N",
        help="also fit a small MLP on the codes of the first N training images and print its "
        "held-out R² per factor (reads nonlinear codes that kNN misses)",
    )
    pb.add_argument("--out", help="write the table to this file (default: print it)")
    ob = group.add_parser(
        "objective",
        help="what a config's InfoNCE rewards: the loss of an encoder that outputs the latents",
        description=(
            "On a 3DIdent config's first training batches, the InfoNCE loss of an oracle encoder "
            "that outputs the true latents (best scale), with every factor and without --drop's "
            "factors: the difference is what the loss pays for encoding them, known before any "
            "training. Two pairings: 'snapped' (what training sees: both latents snapped to the "
            "nearest rendered image) and 'exact' (z~ as drawn from the conditional)."
        ),
        epilog=(
            "example:\n  clinvert threedident objective configs/threedident/s3-box-normal-conv.yaml "
            "\\\n      --set train.batch_size=512 --out objective.md\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ob.add_argument("configs", nargs="+", metavar="CONFIG", help="3DIdent run configs")
    ob.add_argument("--profile", help="merge this profile of each config first")
    _add_set(ob)
    ob.add_argument("--batches", type=int, default=8, help="training batches averaged (8)")
    ob.add_argument(
        "--drop",
        default=",".join(("rot_alpha", "rot_beta", "rot_gamma")),
        help="comma-separated factors left out of the oracle (default: the three rotations)",
    )
    ob.add_argument("--out", help="write the table to this file (default: print it)")


def demo_config_path() -> Path:
    """Path of the embedded demo config."""
    return Path(str(resources.files("clinvert") / "defaults" / "demo.yaml"))


def _cell(value) -> str:
    return f"{value:8.3f}" if isinstance(value, int | float) else f"{'-':>8s}"


def print_comparison(result: dict) -> None:
    """Print identity vs learned R^2 and MCC of a result ('-' where the source has no latents)."""
    ident, final = result["identity"], result.get("final")
    print()
    print(f"{'':24s}{'R2':>8s}{'MCC':>8s}")
    images = "baseline" in ident  # a linear fit on pooled pixels or observations, not g(z) itself
    label = "identity  observations" if images else "identity  z vs g(z)"
    print(f"{label:24s}{_cell(ident.get('r2'))}{_cell(ident.get('mcc'))}")
    if final:
        label = "learned   z vs f(x)" if images else "learned   z vs f(g(z))"
        print(f"{label:24s}{_cell(final.get('r2'))}{_cell(final.get('mcc'))}")
        if final.get("r2") is None:
            print("(no ground-truth latents: nothing to score; give data.z to score the codes)")
    elif result["status"] == "stopped":
        print(f"learned: paused at step {result['steps']} of {result['of_steps']} (--stop-at)")
    else:
        print(f"learned: run {result['status']}: {result.get('error', '')}")
    print(f"({result['steps']} steps, {result['wall_seconds']:.0f} s on {result['device']})")


def _cmd_train(args: argparse.Namespace) -> int:
    from clinvert import distributed

    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {args.nproc}")
    if args.recipe is not None:
        return _train_recipe(args)
    if distributed.launched():  # one rank of --nproc or torchrun
        distributed.init_from_env(args.nproc)
        try:
            code = _train_here(args)
            distributed.shutdown(together=True)  # every rank finished: leave together
            return code
        except Exception as exc:
            if distributed.lost_peer(exc):
                return distributed.rank_exit(exc)
            raise
        finally:
            distributed.shutdown()  # no-op once left
    if args.nproc is not None and args.nproc > 1:
        _check_before_launch(args)  # one error line from here, not one per rank
        return distributed.launch(args.argv, args.nproc, args.resume or args.out)
    return _train_here(args)


def _check_before_launch(args: argparse.Namespace) -> None:
    """What every rank would refuse (the rules of :class:`clinvert.data.sources.Shards`),
    checked once before the ranks start."""
    from clinvert.data.sources import Shards
    from clinvert.rundir import check_run_dir

    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f"--stop-at: must be >= 1, got {args.stop_at}")
    if args.resume:
        if not (Path(args.resume) / "config.yaml").exists():
            raise ConfigError(f"--resume: {args.resume} holds no run (config.yaml missing)")
        cfg = validate_config(read_run_config(args.resume))
        shards = cfg.train.shards or 1  # a run started in one process has one shard
    else:
        if not args.config or not args.out:
            raise ConfigError("config, --out: a distributed run needs both")
        cfg = load_config(args.config, args.overrides, args.profile)
        check_run_dir(Path(args.out), args.force)
        check_data_dirs(cfg)
        shards = cfg.train.shards or args.nproc
    Shards.split(cfg.train.batch_size, shards, args.nproc)


def _train_here(args: argparse.Namespace) -> int:
    from clinvert import distributed, train

    if args.resume:
        if args.config or args.overrides or args.profile:
            raise ConfigError(
                "--resume: takes no CONFIG, --profile or --set; the run's config.yaml is used"
            )
        if not (Path(args.resume) / "config.yaml").exists():
            raise ConfigError(f"--resume: {args.resume} holds no run (config.yaml missing)")
        if args.steps is not None and args.steps < 0:
            raise ConfigError(f"--steps: must be >= 0, got {args.steps}")
        result = train.resume(
            args.resume, steps=args.steps, progress=not args.quiet, stop_at=args.stop_at
        )
    else:
        if not args.config:
            raise ConfigError("config: a YAML config is required (or --resume DIR)")
        if not args.out:
            raise ConfigError("--out: a run directory is required")
        if args.steps is not None:
            raise ConfigError("--steps: only with --resume; use --set train.steps=N")
        cfg = load_config(args.config, args.overrides, args.profile)
        result = train.train(
            cfg, args.out, progress=not args.quiet, force=args.force, stop_at=args.stop_at
        )
    if distributed.world().is_main:
        print_comparison(result)
        if result["status"] == "stopped":
            nproc = f" --nproc {args.nproc}" if args.nproc and args.nproc > 1 else ""
            print(f"continue with: clinvert train --resume {args.resume or args.out}{nproc}")
    return 0 if result["status"] in ("finished", "stopped") else 1


def _train_recipe(args: argparse.Namespace) -> int:
    """``clinvert train CONFIG --recipe NAME --out DIR``: every phase of the recipe in turn."""
    from clinvert import distributed
    from clinvert.recipe import read_recipe_record, run_recipe

    _check_recipe_args(args)
    for flag, given in (
        ("--resume", args.resume),
        ("--stop-at", args.stop_at),
        ("--steps", args.steps),
    ):
        if given is not None:
            raise ConfigError(
                f"{flag}: not with --recipe (its phases set their steps; run the same command "
                "again to continue)"
            )
    if args.nproc is not None and args.nproc > 1:
        raise ConfigError("--nproc: --recipe trains in one process; train its phases one by one")
    if distributed.launched():
        raise ConfigError(
            "WORLD_SIZE: --recipe trains in one process, not under torchrun; "
            "train its phases one by one"
        )
    if not args.out:
        raise ConfigError("--out: a folder for the recipe's phases is required")
    results = run_recipe(
        args.config,
        args.recipe,
        args.out,
        args.overrides,
        force=args.force,
        progress=not args.quiet,
    )
    last = results[-1]
    print_comparison(last)
    print(f"\n{'phase':24s}{'status':>10s}{'steps':>8s}{'R2':>8s}{'MCC':>8s}")
    for phase in read_recipe_record(args.out)["phases"]:
        steps = phase["steps"] if phase["steps"] is not None else "-"
        print(
            f"{phase['phase']:24s}{phase['status']:>10s}{steps:>8}"
            f"{_cell(phase['r2'])}{_cell(phase['mcc'])}"
        )
    print(f"(every phase's run and scores: {Path(args.out) / 'recipe.json'})")
    return 0 if last["status"] == "finished" else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from clinvert import train

    cfg = load_config(demo_config_path(), args.overrides)
    print(f"clinvert demo: {cfg.name}")
    print(
        f"  process: {describe_process(cfg)} (n={cfg.latent.dim}), "
        f"{cfg.mixing.layers}-layer invertible MLP mixing"
    )
    print(
        f"  model: {describe_model(cfg)}; {cfg.train.steps} steps of batch {cfg.train.batch_size}"
    )
    result = train.train(cfg, args.out, progress=not args.quiet, force=True)
    print_comparison(result)
    print(f"run directory: {args.out}")
    return 0 if result["status"] == "finished" else 1


def _check_recipe_args(args: argparse.Namespace) -> None:
    """One-line errors for a ``--recipe`` without its config or beside ``--profile`` (``train``
    and ``config`` alike)."""
    if args.profile is not None:
        raise ConfigError("--profile: not with --recipe (its phases name their profiles)")
    if not args.config:
        raise ConfigError("config: --recipe needs the YAML config that defines it")


def _cmd_config(args: argparse.Namespace) -> int:
    if args.recipe is None:
        print(load_config(args.config, args.overrides, args.profile).to_yaml(), end="")
        return 0
    from clinvert.recipe import plan

    _check_recipe_args(args)
    phases = plan(args.config, args.recipe, args.out, args.overrides, check_data=False)
    for i, phase in enumerate(phases, start=1):
        print(f"--- # phase {i}/{len(phases)}: {phase.out}")
        print(phase.cfg.to_yaml(), end="")
    return 0


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from clinvert.reproduce import reproduce

    _check_workers(args.workers)
    if args.quick and args.profile not in (None, "quick"):
        raise ConfigError(f"--profile: give --quick or --profile, not both (got {args.profile!r})")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    command = "clinvert " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else ""
    summary = reproduce(
        args.table,
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        rows=rows,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        progress=not args.quiet,
        command=command or f"clinvert reproduce {args.table}",
        root=Path(args.configs) if args.configs else None,
        collect_only=args.collect,
        data=args.data,
        ceiling_seeds=args.ceiling_seeds,
        profile=args.profile,
    )
    print((Path(args.out) / f"{args.table}.md").read_text())
    incomplete = [s["row"] for s in summary if s["failed"] or s["missing"]]
    if incomplete:
        print(f"incomplete rows: {', '.join(incomplete)}", file=sys.stderr)
    return 0


def _cmd_headline(args: argparse.Namespace) -> int:
    from clinvert.report import render_report
    from clinvert.reproduce import headline

    _check_workers(args.workers)
    results = headline(
        args.out,
        seeds=args.seeds,
        progress=not args.quiet,
        workers=args.workers,
        ceiling_seeds=args.ceiling_seeds,
    )
    for table in results:
        print((Path(args.out) / f"{table}.md").read_text())
    print(f"report: {render_report(args.out)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from clinvert.report import render_report

    path = render_report(args.dir)
    print(f"report: {path}")
    return 0


def _cmd_alignment(args: argparse.Namespace) -> int:
    from clinvert.alignment import alignment_table, find_runs, score_runs
    from clinvert.io import write_json, write_text

    if args.trials < 1:
        raise ConfigError(f"--trials: must be an integer >= 1, got {args.trials}")
    if args.out and not args.out.endswith(".json"):
        raise ConfigError(f"--out: must name a .json file, got {args.out!r}")
    runs, skipped = find_runs(args.runs)
    if skipped:
        print(f"alignment: skipped {skipped} unfinished run(s)", file=sys.stderr)
    records = score_runs(runs, trials=args.trials, progress=not args.quiet)
    table = alignment_table(records)
    if args.out:
        write_json(args.out, records)
        write_text(Path(args.out).with_suffix(".md"), table)
    print(table, end="")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from clinvert import shipped

    if args.configs_command == "list":
        names = shipped.list_configs(args.prefix)
        if not names:
            raise ConfigError(f"prefix: no shipped config starts with {args.prefix!r}")
        print("\n".join(names))
    elif args.configs_command == "show":
        print(shipped.find_config(args.name).read_text(), end="")
    else:
        written = shipped.export_configs(args.dir, args.prefix)
        print(f"{len(written)} configs written to {args.dir}")
    return 0


def _print_or_write(table: str, out: str | None, what: str) -> None:
    """Write ``table`` to ``out`` (atomically) and name it, or print it."""
    if out:
        from clinvert.io import write_text

        write_text(Path(out), table)
        print(f"{what}: {out}")
    else:
        print(table, end="")


def _cmd_threedident(args: argparse.Namespace) -> int:
    if args.threedident_command in ("table", "gimbal", "folds"):
        from clinvert.data.threedident.summary import folds_table, gimbal_table, markdown_table

        if args.threedident_command == "folds" and args.matrix is not None:
            from clinvert.data.threedident.summary import fold_matrix_table, parse_factors

            table = fold_matrix_table(args.runs, parse_factors(args.matrix))
            _print_or_write(table, args.out, "folds")
            return 0
        make = {"table": markdown_table, "gimbal": gimbal_table, "folds": folds_table}[
            args.threedident_command
        ]
        _print_or_write(make(args.runs), args.out, args.threedident_command)
        return 0

    if args.threedident_command == "agree":
        from clinvert.data.threedident.agreement import agreement_table

        table = agreement_table(args.runs, args.samples, args.data)
        _print_or_write(table, args.out, "agree")
        return 0

    if args.threedident_command == "probe":
        from clinvert.data.threedident.probe import probe_table

        table = probe_table(args.runs, args.samples, args.data, args.mlp)
        _print_or_write(table, args.out, "probe")
        return 0

    if args.threedident_command == "objective":
        from clinvert.data.threedident.objective import describe_setting, oracle_rows, oracle_table

        drop = tuple(f.strip() for f in args.drop.split(",") if f.strip())
        entries = []
        for config in args.configs:
            cfg = load_config(config, args.overrides, args.profile)
            rows = oracle_rows(cfg, drop, args.batches)  # refuses a non-3DIdent config first
            entries.append((describe_setting(cfg), rows))
        _print_or_write(oracle_table(entries, drop), args.out, "objective")
        return 0
    if args.threedident_command == "curves":
        from clinvert.data.threedident.summary import plot_factor_curves

        print(f"curves: {plot_factor_curves(args.runs, args.out)}")
        return 0
    if args.threedident_command == "grid":
        from clinvert.data.threedident.grid import save_grid

        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        print(f"grid: {save_grid(args.out, backends, args.values, args.size)}")
        return 0

    from clinvert.data.threedident import store

    store.check_settings(args.n, args.size, args.backend, args.mode, args.seed, args.samples)
    manifest = store.render_dataset(
        args.out,
        n=args.n,
        size=args.size,
        backend=args.backend,
        mode=args.mode,
        seed=args.seed,
        samples=args.samples,
        progress=not args.quiet,
        workers=args.workers,
    )
    print(
        f"{args.out}: {manifest['n']} images {manifest['size']}x{manifest['size']} "
        f"({manifest['renderer']}, {manifest['seconds']:.1f} s)"
    )
    return 0


COMMANDS = {
    "train": _cmd_train,
    "demo": _cmd_demo,
    "reproduce": _cmd_reproduce,
    "headline": _cmd_headline,
    "report": _cmd_report,
    "alignment": _cmd_alignment,
    "config": _cmd_config,
    "configs": _cmd_configs,
    "threedident": _cmd_threedident,
    "kitti": _cmd_kitti,
}


#: Commands that train in this process and get :func:`clinvert.runtime.configure_process`.
TRAINING_COMMANDS = ("train", "demo", "reproduce", "headline")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what --nproc passes on
    try:
        if args.command in TRAINING_COMMANDS:
            from clinvert.runtime import configure_process

            configure_process()
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"clinvert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "recipe", None) is not None and args.command == "train":
            hint = "run the same command again"
        else:
            hint = "'clinvert train --resume DIR'"
        print(f"clinvert: interrupted; continue with {hint}", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The process entry point (the ``clinvert`` command and ``python -m clinvert``): exit with
    :func:`main`'s status.

    A rank of a distributed run (one that joined a process group) ends through
    :func:`clinvert.distributed.end_process`, without the interpreter's teardown, which has
    aborted finished ranks (SIGABRT); an error that escapes such a rank is printed with its traceback and
    ends it with status 1, as Python would.
    """
    try:
        code = main()
    except Exception:
        if not _joined_group():
            raise
        traceback.print_exc()
        code = 1
    if _joined_group():
        from clinvert import distributed

        distributed.end_process(code)
    sys.exit(code)


def _joined_group() -> bool:
    """Whether this process joined a process group (without importing torch.distributed when
    nothing did: the commands that train nothing start faster)."""
    module = sys.modules.get("clinvert.distributed")
    return module is not None and module.joined()


if __name__ == "__main__":
    run()
