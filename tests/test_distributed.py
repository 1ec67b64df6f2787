"""Data-parallel training: the rows-against-all-columns InfoNCE, gathered negatives on gloo with two
processes, shards that make one process draw the batch of N, ``--nproc``, a killed rank, resume.

Every equality here is a statement of the math: the InfoNCE of a global batch is the mean over its
rows, so the mean over ranks of each rank's rows (against every column) is the same number and
has the same gradient; float64 leaves only rounding (tolerance 1e-10), float32 training the
reduction order of the gradient sum (1e-5 relative)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clinvert import distributed, losses
from clinvert.config import ConfigError, validate_config
from clinvert.data.sources import Shards, make_source
from clinvert.distributed import World
from clinvert.losses import info_nce
from clinvert.rundir import load_checkpoint
from small_configs import box_l1

#: (similarity, p, tau): the bounded dot path (cosine, tau 0.5), the row-maximum dot path (cosine
#: at a small tau), L2 (dot with a bias), L1 and L3 (fused kernels), L1.5 (blockwise torch).
MODES = ("rows", "replicated")  # train.distributed_loss
CASES = [
    ("cosine", 2.0, 0.5),
    ("cosine", 2.0, 0.01),
    ("lp", 2.0, 0.3),
    ("lp", 1.0, 1.0),
    ("lp", 3.0, 1.0),
    ("lp", 1.5, 1.0),
]


def _global_batch(seed: int = 0, rows: int = 12, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    b = a + 0.3 * torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("self_negative", [False, True])
@pytest.mark.parametrize(("similarity", "p", "tau"), CASES)
def test_rows_against_all_columns_average_to_the_global_loss(
    similarity, p, tau, self_negative, fused, monkeypatch
) -> None:
    monkeypatch.setattr(losses, "USE_FUSED_KERNELS", fused and losses.USE_FUSED_KERNELS)
    a, b = _global_batch()
    kw = {"similarity": similarity, "p": p, "tau": tau, "self_negative": self_negative}
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    full = info_nce(a1, b1, **kw)
    full.backward()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ranks = 3
    rows = a.shape[0] // ranks
    parts = [
        info_nce(a2[r * rows : (r + 1) * rows], b2, offset=r * rows, **kw) for r in range(ranks)
    ]
    split = torch.stack(parts).mean()
    split.backward()
    torch.testing.assert_close(split, full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a2.grad, a1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b2.grad, b1.grad, rtol=1e-10, atol=1e-12)


def test_a_registered_similarity_takes_offsets_too() -> None:
    losses.register_similarity("neg_sq_l2_dist_test", lambda a, b, p: -(torch.cdist(a, b) ** 2))
    a, b = _global_batch(1)
    full = info_nce(a, b, similarity="neg_sq_l2_dist_test", self_negative=True)
    halves = [
        info_nce(a[:6], b, similarity="neg_sq_l2_dist_test", self_negative=True, offset=0),
        info_nce(a[6:], b, similarity="neg_sq_l2_dist_test", self_negative=True, offset=6),
    ]
    torch.testing.assert_close(torch.stack(halves).mean(), full, rtol=1e-10, atol=1e-12)


def test_offsets_outside_the_columns_are_refused() -> None:
    a, b = _global_batch()
    with pytest.raises(ValueError, match="offset must be in 0..6"):
        info_nce(a[:6], b, offset=7)
    with pytest.raises(ValueError, match=r"shapes \[B, d\] and \[M, d\]"):
        info_nce(a[:6], b[:, :3], offset=0)


# ----- two gloo processes ------------------------------------------------------------------------
def _gloo_worker(rank: int, init: str, out: str) -> None:
    """One rank: gathered InfoNCE (its rows, or the whole batch replicated), gradients summed over
    ranks as DDP averages them."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results = []
    for mode in MODES:
        for similarity, p, tau in CASES:
            for self_negative in (False, True):
                a, b = _global_batch(2)
                a, b = a.requires_grad_(), b.requires_grad_()
                rows = a.shape[0] // 2
                own = slice(rank * rows, (rank + 1) * rows)
                a_local, b_local = a[own], b[own]
                kw = {"similarity": similarity, "p": p, "tau": tau, "self_negative": self_negative}
                if mode == "rows":
                    loss = info_nce(a_local, distributed.gather(b_local), offset=rank * rows, **kw)
                else:
                    both = distributed.gather_replicated(torch.cat([a_local, b_local]))
                    both = both.unflatten(0, (2, 2, rows))
                    loss = info_nce(both[:, 0].flatten(0, 1), both[:, 1].flatten(0, 1), **kw)
                loss.backward()
                # what DDP does with the parameters' gradients: the mean over the ranks
                grads = torch.cat([a.grad[own], b.grad[own]])
                total = loss.detach().clone()
                torch.distributed.all_reduce(total)
                results.append({"loss": float(total) / 2, "grads": grads.tolist()})
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def test_gathered_loss_and_gradients_equal_the_single_process_ones(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_gloo_worker, args=(init, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    i = 0
    for mode in MODES:
        for similarity, p, tau in CASES:
            for self_negative in (False, True):
                a, b = _global_batch(2)
                a, b = a.requires_grad_(), b.requires_grad_()
                kw = {"similarity": similarity, "p": p, "tau": tau, "self_negative": self_negative}
                loss = info_nce(a, b, **kw)
                loss.backward()
                for r in range(2):
                    got = ranks[r][i]
                    what = (mode, similarity, p, self_negative, r)
                    # rows: the mean of the ranks' row means; replicated: each rank the loss
                    assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-10), what
                    # rows: L = (L_0 + L_1) / 2 for the ranks' row means L_r. Rank r's anchors
                    # enter L_r only, and its positives' gradient sums both ranks' (the gather's
                    # backward). Replicated: each rank holds dL/d(everything) and keeps its own
                    # rows, times 2. Either way rank r holds 2 dL/d(its rows), and DDP's mean
                    # over the 2 ranks of the parameters' gradients is dL/d(parameters).
                    rows = a.shape[0] // 2
                    own = slice(r * rows, (r + 1) * rows)
                    want = 2 * torch.cat([a.grad[own], b.grad[own]])
                    grads = torch.tensor(got["grads"], dtype=torch.float64)
                    torch.testing.assert_close(grads, want, rtol=1e-10, atol=1e-12, msg=str(what))
                i += 1


# ----- shards: one process draws the batch of N ---------------------------------------------------
def _synthetic(shards: int | None = 2) -> dict:
    cfg = box_l1(3, 16, 64, 12, eval_every=4, checkpoint_every=4, device="cpu", shards=shards)
    return {"name": "dist-test", **cfg}


def _arrays(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    z = rng.uniform(size=(300, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", np.tanh(z @ rng.normal(size=(3, 5))).astype(np.float32))
    np.save(tmp_path / "z.npy", z)
    cfg = _synthetic()
    cfg.pop("mixing")
    cfg["data"] = {"source": "arrays", "x": str(tmp_path / "x.npy"), "z": str(tmp_path / "z.npy")}
    return cfg


def _threedident(tmp_path: Path) -> dict:
    from test_threedident_train import image_config, write_toy_dataset

    toy = {
        "train": write_toy_dataset(tmp_path / "train", 120, seed=1),
        "test": write_toy_dataset(tmp_path / "test", 40, seed=2),
    }
    cfg = image_config(toy, shards=2)
    cfg["model"]["encoder"] = "conv"
    return cfg


@pytest.mark.parametrize("kind", ["synthetic", "arrays", "threedident"])
def test_one_process_with_n_shards_draws_the_batch_of_n_processes(
    kind: str, tmp_path: Path, monkeypatch
) -> None:
    build = {"synthetic": lambda _: _synthetic(), "arrays": _arrays, "threedident": _threedident}
    cfg = validate_config(build[kind](tmp_path))
    device = torch.device("cpu")
    whole = make_source(cfg, device)
    full = [whole.pairs(step) for step in range(3)]
    parts = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: World(rank, 2))
        source = make_source(cfg, device)
        parts.append([source.pairs(step) for step in range(3)])
        source.close()
    monkeypatch.undo()
    whole.close()
    for step in range(3):
        for view in range(2):
            joined = torch.cat([parts[0][step][view], parts[1][step][view]])
            assert joined.shape[0] == cfg.train.batch_size
            torch.testing.assert_close(joined, full[step][view], rtol=0, atol=0)
    # and another step is another batch
    assert not torch.equal(full[0][0], full[1][0])


def test_shards_must_split_evenly(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "world", lambda: World(0, 2))
    with pytest.raises(ConfigError, match="train.shards: 3 shards cannot be split evenly over 2"):
        Shards.of(validate_config(_synthetic(3)))
    cfg = _synthetic(4)
    cfg["train"]["batch_size"] = 66
    with pytest.raises(ConfigError, match="train.batch_size: 66 rows cannot be split into 4"):
        Shards.of(validate_config(cfg))
    plan = Shards.of(validate_config(_synthetic(4)))
    assert (plan.count, plan.first, plan.local, plan.size, plan.rows) == (4, 0, 2, 16, 32)


def test_a_single_process_without_shards_keeps_the_batches_of_earlier_versions() -> None:
    # one shard: the sequential stream (synthetic) and batch_seed (arrays, images) as before
    plan = Shards.of(validate_config(_synthetic(None)))
    assert (plan.count, plan.local, plan.size) == (1, 1, 64)
    from clinvert.data.sources import batch_seed

    assert plan.seeds(7, 0, 5) == [batch_seed(7, 0, 5)]


# ----- --nproc: the command line -----------------------------------------------------------------
def _clinvert(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != distributed.FAULT_ENV}
    full_env.update({"OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "clinvert", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path, rel: float) -> None:
    for x, y in zip(_rows(a), _rows(b), strict=True):
        assert x["step"] == y["step"]
        for key in ("loss", "r2", "mcc"):
            if x[key] is None:
                assert y[key] is None
            else:
                assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-7), (key, x["step"])
    pa = load_checkpoint(a / "checkpoint.pt")["model"]
    pb = load_checkpoint(b / "checkpoint.pt")["model"]
    for name in pa:
        torch.testing.assert_close(pb[name], pa[name], rtol=rel, atol=1e-6)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("nproc")
    cfg = base / "c.yaml"
    cfg.write_text(yaml.safe_dump(_synthetic(None)))
    out = base / "two"
    done = _clinvert("train", str(cfg), "--out", str(out), "--nproc", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    return cfg, out


def test_two_processes_train_as_one_process_with_the_same_global_batch(
    two_process_run, tmp_path: Path
) -> None:
    cfg, two = two_process_run
    result = json.loads((two / "result.json").read_text())
    assert result["processes"] == 2 and result["config"]["train"]["shards"] == 2
    one = tmp_path / "one"
    done = _clinvert("train", str(cfg), "--out", str(one), "--set", "train.shards=2", "--quiet")
    assert done.returncode == 0, done.stderr
    # float32: the same arithmetic but for the order of the gradient's sums (DDP's all-reduce)
    _same_run(two, one, rel=1e-5)
    # evaluated once: one metrics row per evaluation, one result
    assert [r["step"] for r in _rows(two)] == [0, 4, 8, 12]
    # the other way of splitting the loss trains the same run
    rows = tmp_path / "rows"
    args = ("--out", str(rows), "--nproc", "2", "--set", "train.distributed_loss=rows", "--quiet")
    done = _clinvert("train", str(cfg), *args)
    assert done.returncode == 0, done.stderr
    _same_run(rows, one, rel=1e-5)


def test_torchrun_trains_the_run_of_nproc(two_process_run, tmp_path: Path) -> None:
    """The cluster entry point: torchrun (torch.distributed.run) starting ``-m clinvert train``
    trains exactly the run that ``--nproc 2`` trains."""
    cfg, two = two_process_run
    out = tmp_path / "torchrun"
    env = {k: v for k, v in os.environ.items() if k != distributed.FAULT_ENV}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(_free_port()), "-m", "clinvert", "train", str(cfg), "--out", str(out),
         "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "result.json").read_text())["processes"] == 2
    _same_run(two, out, rel=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_killed_rank_stops_the_run_in_one_line_and_it_resumes_exactly(
    two_process_run, tmp_path: Path
) -> None:
    cfg, uninterrupted = two_process_run
    out = tmp_path / "killed"
    killed = _clinvert(
        "train",
        str(cfg),
        "--out",
        str(out),
        "--nproc",
        "2",
        "--quiet",
        env={distributed.FAULT_ENV: "1:10"},
    )
    assert killed.returncode == 1
    lines = [line for line in killed.stderr.splitlines() if line.startswith("clinvert")]
    assert lines == [
        f"clinvert: error: rank 1 of 2 exited with code 9; every rank stopped, the last "
        f"checkpoint is kept; continue with: clinvert train --resume {out} --nproc 2"
    ]
    assert "Traceback" not in killed.stderr
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 8
    assert not (out / "result.json").exists()
    resumed = _clinvert("train", "--resume", str(out), "--nproc", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    _same_run(uninterrupted, out, rel=0.0)


def test_the_launcher_blames_the_rank_that_failed_first() -> None:
    """Ranks seen failed at one poll: a rank's own exit code or fatal signal before the SIGABRT that
    gloo sends a rank whose peer vanished, before a lost peer; ties to the lowest rank."""
    abort, lost = -signal.SIGABRT, distributed.PEER_LOST
    assert distributed.blame([(0, abort), (1, 9)]) == (1, 9)
    assert distributed.blame([(0, lost), (1, abort)]) == (1, abort)
    assert distributed.blame([(0, lost), (1, -signal.SIGKILL)]) == (1, -signal.SIGKILL)
    assert distributed.blame([(1, 9), (0, 1)]) == (0, 1)
    assert distributed.blame([(1, abort)]) == (1, abort)


def test_nproc_errors_are_one_line_before_any_rank_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    bad = _synthetic(None)
    bad["train"]["batch_size"] = 63
    cfg.write_text(yaml.safe_dump(bad))
    done = _clinvert("train", str(cfg), "--out", str(tmp_path / "r"), "--nproc", "2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "clinvert: error: train.batch_size: 63 rows cannot be split into 2 equal shards "
        "(use a multiple of the number of processes)"
    ]
    assert not (tmp_path / "r").exists()
    done = _clinvert("train", str(cfg), "--out", str(tmp_path / "r"), "--nproc", "0")
    assert done.returncode == 2 and "--nproc: must be >= 1, got 0" in done.stderr


class _Ended(Exception):
    """Raised by the stand-in for ``os._exit``: the process would have ended with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _fake_exit(code: int):
    raise _Ended(code)


@pytest.mark.parametrize("joined", [False, True])
def test_a_rank_that_joined_a_group_ends_without_the_interpreter_teardown(
    joined: bool, monkeypatch, capsys
) -> None:
    """A finished rank's status goes to ``os._exit`` (the interpreter's teardown aborted finished
    ranks with SIGABRT); a process that joined nothing exits as usual."""
    from clinvert import cli

    monkeypatch.setattr(distributed, "_JOINED", joined)
    monkeypatch.setattr(os, "_exit", _fake_exit)
    monkeypatch.setattr(cli, "main", lambda: 0)
    expected = _Ended if joined else SystemExit
    with pytest.raises(expected) as ended:
        cli.run()
    assert ended.value.code == 0

    # an error that escapes: printed with its traceback; a rank ends with status 1, as Python would
    def broken() -> int:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(cli, "main", broken)
    if joined:
        with pytest.raises(_Ended) as ended:
            cli.run()
        assert ended.value.code == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "RuntimeError: broken on purpose" in err
    else:
        with pytest.raises(RuntimeError, match="broken on purpose"):
            cli.run()
