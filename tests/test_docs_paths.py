"""Every file path that the README, the other READMEs and the command line's help texts name
exists: a user who copies one finds the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clinvert.cli import build_parser
from clinvert.errors import ConfigError
from clinvert.shipped import find_config, list_configs

ROOT = Path(__file__).resolve().parents[1]
#: Folders whose files a user is pointed at (results and runs are outputs, data is rendered).
PREFIXES = ("configs/", "benchmarks/", "examples/", "tests/", "src/", ".ci/")
DOCS = [
    "README.md",
    "CHANGELOG.md",
    "benchmarks/README.md",
    *(p.relative_to(ROOT).as_posix() for p in sorted(ROOT.glob("results/*/README.md"))),
]
_ALTERNATIVES = "|".join(re.escape(p) for p in PREFIXES)
PATH = re.compile(rf"(?<![\w./-])((?:{_ALTERNATIVES})[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)#\s]+)\)")
#: Names of shipped configs as `train` and `config` take them (``table2/ROW``, ``examples/ROW``).
SHIPPED = re.compile(
    r"(?<![\w./-])((?:synthetic|kitti|threedident|table1|table2|examples|fast)/[\w.-]*\w)"
)


def _exists(token: str, base: Path = ROOT) -> bool:
    """A file or folder of the repository, or the name of a shipped config."""
    if (ROOT / token).exists() or (base / token).exists():
        return True
    if list_configs(token.rstrip("/") + "/"):  # a folder of shipped configs
        return True
    try:
        find_config(token)
    except ConfigError:
        return False
    return True


def _placeholder(path: str) -> bool:
    """A pattern, not a path: ``configs/synthetic/TABLE/*.yaml``, ``configs/.../<row>.yaml``."""
    return any(ch in path for ch in "*<>{}") or any(
        p.isupper() and len(p) > 1 for p in re.split(r"[/.]", path)
    )


def _paths(text: str) -> set[str]:
    found = {m.group(1).rstrip(".") for m in PATH.finditer(text)}
    found |= {m.group(1) for m in LINK.finditer(text) if "://" not in m.group(1)}
    return {p for p in found if not _placeholder(p)}


def _help_texts() -> str:
    parser = build_parser()
    texts = [parser.format_help()]
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    stack = [choice for a in actions for choice in a.choices.values()]
    while stack:
        sub = stack.pop()
        texts.append(sub.format_help())
        for a in sub._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                stack.extend(a.choices.values())
    return "\n".join(texts)


@pytest.mark.parametrize("doc", DOCS)
def test_paths_named_in_the_docs_exist(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text()
    missing = sorted(p for p in _paths(text) if not _exists(p, path.parent))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_paths_named_in_the_help_texts_exist() -> None:
    text = _help_texts()
    names = _paths(text) | {m.group(1) for m in SHIPPED.finditer(text)}
    missing = sorted(p for p in names if not _placeholder(p) and not _exists(p))
    assert not missing, f"help texts name paths or configs that do not exist: {missing}"
    # and they were looked at: the train examples name shipped configs
    assert "table2/box-uniform-laplace0.05__box-l1" in names
