"""The configs that ship with clinvert: the paper's tables, the fast presets, 3DIdent and KITTI.

They live in the package (``clinvert/configs/``; the repository's ``configs/`` is a link to it), so
that ``clinvert reproduce``, ``clinvert headline`` and ``clinvert train table1/ROW`` work from any
directory after a plain ``pip install``. A config is named by its path below that folder without
``.yaml`` (``synthetic/table1/sphere-uniform-vmf10__sphere-cosine-tau0.1``); a name that is unique
may be shortened to its last parts (``table1/sphere-uniform-vmf10__sphere-cosine-tau0.1``, or the
row alone).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clinvert.errors import ConfigError

#: The folder of shipped configs inside the installed package.
ROOT = Path(__file__).resolve().parent / "configs"


def config_root() -> Path:
    """The folder of shipped configs (``clinvert/configs``)."""
    return ROOT


def list_configs(prefix: str = "") -> dict[str, Path]:
    """Name -> file of every shipped config whose name starts with ``prefix``, sorted by name."""
    found = {
        p.relative_to(ROOT).with_suffix("").as_posix(): p for p in sorted(ROOT.rglob("*.yaml"))
    }
    return {name: path for name, path in found.items() if name.startswith(prefix)}


def find_config(name: str) -> Path:
    """The shipped config called ``name`` (full name, or a unique tail of it; ``.yaml`` optional).

    Raises:
        ConfigError: no shipped config has that name, or several end with it (both are named).
    """
    key = name.removesuffix(".yaml").strip("/")
    every = list_configs()
    if key in every:
        return every[key]
    tails = [n for n in every if n.endswith("/" + key)]
    if len(tails) == 1:
        return every[tails[0]]
    if tails:
        raise ConfigError(f"config: {name!r} names several shipped configs: {', '.join(tails)}")
    raise ConfigError(
        f"config: file not found and no shipped config named {name!r} (see `clinvert configs list`)"
    )


def resolve_config_path(name: str) -> Path:
    """A config argument: an existing file as given, else the shipped config of that name."""
    path = Path(name)
    if path.is_file():
        return path
    return find_config(name)


def export_configs(out: str | Path, prefix: str = "") -> list[Path]:
    """Copy the shipped configs (those starting with ``prefix``) into ``out``, keeping their
    folders; files that exist already are left as they are. Returns the files written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"DIR: {out} exists and is not a directory")
    written = []
    for name, path in list_configs(prefix).items():
        target = out / f"{name}.yaml"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    return written
