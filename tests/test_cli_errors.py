"""Every command, given bad arguments, stops with one line on stderr and a non-zero exit status:
never a traceback, never a half-written result."""

from __future__ import annotations

from pathlib import Path

from clinvert.cli import main


def _cases(tmp: Path) -> dict[str, list[str]]:
    a_file = tmp / "a-file"
    a_file.write_text("not a directory")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("model: [unclosed")
    return {
        "train: unknown option": ["train", "--bogus"],
        "train: missing config": ["train", str(tmp / "none.yaml"), "--out", str(tmp / "r")],
        "train: invalid YAML": ["train", str(bad_yaml), "--out", str(tmp / "r")],
        "train: --out is a file": [
            "train",
            "examples/box-uniform-laplace0.1__box-l1",
            "--out",
            str(a_file),
        ],
        "train: bad override": [
            "train",
            "examples/box-uniform-laplace0.1__box-l1",
            "--out",
            str(tmp / "r"),
            "--set",
            "model.tau=-1",
        ],
        "train: --nproc 0": [
            "train",
            "examples/box-uniform-laplace0.1__box-l1",
            "--out",
            str(tmp / "r"),
            "--nproc",
            "0",
        ],
        "train: --resume nothing": ["train", "--resume", str(tmp / "nothing")],
        "demo: bad override": ["demo", "--out", str(tmp / "d"), "--set", "train.steps=-5"],
        "reproduce: unknown table": ["reproduce", "table9", "--out", str(tmp / "o")],
        "reproduce: no seeds": [
            "reproduce",
            "table1",
            "--quick",
            "--seeds",
            "0",
            "--out",
            str(tmp / "o"),
        ],
        "reproduce: unknown row": [
            "reproduce",
            "table1",
            "--rows",
            "nope",
            "--out",
            str(tmp / "o"),
        ],
        "reproduce: --ceiling-seeds": [
            "reproduce",
            "table1",
            "--seeds",
            "1",
            "--ceiling-seeds",
            "2",
            "--out",
            str(tmp / "o"),
        ],
        "reproduce: --data for a synthetic table": [
            "reproduce",
            "table1",
            "--data",
            str(a_file),
            "--out",
            str(tmp / "o"),
        ],
        "reproduce: --quick and another --profile": [
            "reproduce",
            "kitti",
            "--quick",
            "--profile",
            "long",
            "--out",
            str(tmp / "o"),
        ],
        "reproduce: a profile the rows lack": [
            "reproduce",
            "table1",
            "--profile",
            "no-such-profile",
            "--out",
            str(tmp / "o"),
        ],
        "headline: --workers 0": ["headline", "--workers", "0", "--out", str(tmp / "h")],
        "report: empty folder": ["report", str(tmp)],
        "config: not an int": ["config", "--set", "train.steps=many"],
        "configs: unknown name": ["configs", "show", "no-such-config"],
        "configs: export onto a file": ["configs", "export", str(a_file)],
        "threedident render: bad size": [
            "threedident",
            "render",
            "--n",
            "4",
            "--size",
            "-3",
            "--out",
            str(tmp / "t"),
        ],
        "threedident render: bad backend": [
            "threedident",
            "render",
            "--n",
            "4",
            "--size",
            "16",
            "--backend",
            "povray",
            "--out",
            str(tmp / "t"),
        ],
        "threedident table: no runs": ["threedident", "table", str(tmp / "none")],
        "threedident curves: no runs": [
            "threedident",
            "curves",
            str(tmp / "none"),
            "--out",
            str(tmp / "c.png"),
        ],
        "threedident grid: bad backend": [
            "threedident",
            "grid",
            "--out",
            str(tmp / "g.png"),
            "--backends",
            "povray",
        ],
        "kitti generate: no sequences": [
            "kitti",
            "generate",
            "--out",
            str(tmp / "k.pickle"),
            "--sequences",
            "0",
        ],
        "kitti generate: bad transition": [
            "kitti",
            "generate",
            "--out",
            str(tmp / "k.pickle"),
            "--transition",
            "cauchy",
        ],
        "kitti stats: missing file": ["kitti", "stats", str(tmp / "none.pickle")],
        "kitti fetch: --out is a file": ["kitti", "fetch", "--out", str(a_file), "--quiet"],
        "alignment: missing path": ["alignment", str(tmp / "none")],
        "alignment: no finished runs": ["alignment", str(tmp)],
        "alignment: bad trials": ["alignment", str(tmp), "--trials", "0"],
        "alignment: --out not json": ["alignment", str(tmp), "--out", str(tmp / "a.txt")],
    }


def test_every_command_refuses_bad_arguments_in_one_line(tmp_path: Path, capsys) -> None:
    failures = []
    for name, argv in _cases(tmp_path).items():
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if not (
            code not in (0, None)
            and len(lines) == 1
            and lines[0].startswith("clinvert")
            and "Traceback" not in err
        ):
            failures.append(f"{name}: exit {code}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "r").exists() and not (tmp_path / "o" / "table1.json").exists()
