"""InfoNCE against a naive reference that builds the [B, B, d] tensor (small inputs only)."""

from __future__ import annotations

import math

import pytest
import torch

from clinvert.losses import InfoNCE, alignment, info_nce, uniformity


def naive_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    similarity: str,
    p: float,
    tau: float,
    self_negative: bool = False,
):
    if similarity == "cosine":
        s = (a[:, None, :] * b[None, :, :]).sum(-1)
        own = (a * a).sum(-1)
    else:
        s = -(a[:, None, :] - b[None, :, :]).abs().pow(p).sum(-1)
        own = torch.zeros_like(a[:, 0])
    s, own = s / tau, own / tau
    rows = [torch.cat([s[i], own[i : i + 1]]) if self_negative else s[i] for i in range(len(a))]
    terms = [-(s[i, i] - torch.logsumexp(rows[i], 0)) for i in range(a.shape[0])]
    return torch.stack(terms).mean()


CASES = [("cosine", 2.0), ("lp", 1.0), ("lp", 2.0), ("lp", 3.0), ("lp", 1.5)]


def noisy_pairs(seed: int, rows: int, dim: int, noise: float, similarity: str):
    """float64 anchors and nearby positives (on the unit sphere for the cosine similarity)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    b = a + noise * torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    if similarity == "cosine":
        a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    return a, b


def assert_matches_naive(
    a, b, similarity: str, p: float, tau: float, self_negative: bool = False
) -> None:
    """info_nce and the naive reference agree in value and in both gradients."""
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = info_nce(a1, b1, similarity=similarity, p=p, tau=tau, self_negative=self_negative)
    ref = naive_info_nce(a2, b2, similarity, p, tau, self_negative)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(b1.grad, b2.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("similarity,p", CASES)
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_info_nce_matches_naive_reference_values_and_gradients(similarity, p, tau) -> None:
    a, b = noisy_pairs(0, 33, 5, 0.3, similarity)
    assert_matches_naive(a, b, similarity, p, tau)


@pytest.mark.parametrize("similarity,p", CASES)
def test_info_nce_is_alignment_plus_uniformity_plus_log_batch(similarity, p) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(17, 4, generator=gen), torch.rand(17, 4, generator=gen)
    kw = {"similarity": similarity, "p": p, "tau": 0.5}
    total = alignment(a, b, **kw) + uniformity(a, b, **kw) + math.log(17)
    torch.testing.assert_close(info_nce(a, b, **kw), total)


@pytest.mark.parametrize("similarity,p", CASES)
@pytest.mark.parametrize("fused", [True, False])
def test_self_negative_matches_naive_in_every_path(monkeypatch, similarity, p, fused) -> None:
    import clinvert.losses as losses

    monkeypatch.setattr(losses, "LOGIT_BLOCK_ELEMENTS", 100)  # 3 rows per block of 31 columns
    monkeypatch.setattr(losses, "USE_FUSED_KERNELS", fused and losses.USE_FUSED_KERNELS)
    a, b = noisy_pairs(5, 31, 4, 0.2, similarity)
    for tau in (1e-3, 0.5):  # tiny tau: the self term (logit 0 for L_p) dominates many rows
        assert_matches_naive(a, b, similarity, p, tau, self_negative=True)
    kw = {"similarity": similarity, "p": p, "tau": 0.5, "self_negative": True}
    total = alignment(a, b, **{k: v for k, v in kw.items() if k != "self_negative"})
    total = total + uniformity(a, b, **kw) + math.log(31)
    torch.testing.assert_close(info_nce(a, b, **kw), total)


def test_self_negative_keeps_the_loss_from_vanishing_as_the_scale_grows() -> None:
    # Positives nearer than every negative: scaling all encodings by c multiplies every L_p^p
    # distance by c^p. The plain loss, log(1 + sum_j exp(-(d_ij - d_ii) / tau)), then falls to 0
    # (no gradient left); with the anchor among its negatives the loss is at least the alignment
    # term d_ii / tau, which grows like c^p: the scale cannot run away.
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(64, 10, generator=gen, dtype=torch.float64)
    b = a + 1e-2 * torch.randn(64, 10, generator=gen, dtype=torch.float64)
    kw = {"similarity": "lp", "p": 3.0, "tau": 1.25e-4}
    scales = (0.1, 0.25, 1.0, 4.0)
    plain = [float(info_nce(c * a, c * b, **kw)) for c in scales]
    own = [float(info_nce(c * a, c * b, self_negative=True, **kw)) for c in scales]
    align = [float(alignment(c * a, c * b, **kw)) for c in scales]
    assert plain[0] > plain[1] > plain[2] and plain[2] < 1e-12 and plain[3] < 1e-12
    assert all(o >= al for o, al in zip(own, align, strict=True))
    assert own[3] > own[2] > own[1]  # an optimum at a finite scale, not at infinity
    assert own[3] == pytest.approx(align[3], abs=0.05)  # far out: alignment + log(1 + ~0)


def test_info_nce_of_identical_points_is_log_batch() -> None:
    assert float(InfoNCE("lp", p=1.0)(torch.zeros(8, 3), torch.zeros(8, 3))) == pytest.approx(
        math.log(8)
    )


def test_info_nce_rewards_aligned_positives() -> None:
    a = torch.nn.functional.normalize(
        torch.randn(64, 8, generator=torch.Generator().manual_seed(2)), dim=1
    )
    assert info_nce(a, a, tau=0.1) < info_nce(a, a.roll(1, 0), tau=0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"similarity": "dot"}, "similarity must be one of"),
        ({"tau": 0.0}, "tau"),
        ({"similarity": "lp", "p": 0.5}, "p must be"),
    ],
)
def test_info_nce_rejects_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        InfoNCE(**kwargs)
    with pytest.raises(ValueError, match=match):
        info_nce(torch.zeros(2, 2), torch.zeros(2, 2), **kwargs)


def test_info_nce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        info_nce(torch.zeros(4, 2), torch.zeros(3, 2))


@pytest.mark.parametrize("p", [1.5, 3.0])
def test_blockwise_lp_matches_naive_across_many_blocks(monkeypatch, p) -> None:
    import clinvert.losses as losses

    monkeypatch.setattr(losses, "BLOCK_ELEMENTS", 40)  # a few rows per block
    monkeypatch.setattr(losses, "USE_FUSED_KERNELS", False)  # the torch path (GPU, no numba)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(29, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(29, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: losses.lp_similarity_matrix(x, y, p), (a, b))
    ours = info_nce(a, b, similarity="lp", p=p, tau=0.7)
    ref = naive_info_nce(a, b, "lp", p, 0.7)
    torch.testing.assert_close(ours, ref)
    ga, gb = torch.autograd.grad(ours, (a, b))
    ra, rb = torch.autograd.grad(ref, (a, b))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


@pytest.mark.skipif(not __import__("clinvert.kernels").kernels.AVAILABLE, reason="numba missing")
@pytest.mark.parametrize("p", [1.0, 3.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lp_kernels_match_naive_values_and_gradients(p, dtype) -> None:
    import clinvert.losses as losses

    assert losses._fused_ok(torch.zeros(1, 1, dtype=dtype), torch.zeros(1, 1, dtype=dtype), p)
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(67, 6, generator=gen, dtype=dtype)
    b = torch.randn(45, 6, generator=gen, dtype=dtype)  # M != B: rectangular blocks
    weights = torch.randn(67, 45, generator=gen, dtype=dtype)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = losses.lp_similarity_matrix(a1, b1, p)
    ref = -(a2[:, None, :] - b2[None, :, :]).abs().pow(p).sum(-1)
    # float32: sums of ~50 terms in another order than torch's, so a few ulps of the largest term
    # (eps = 1.2e-7) per term; float64 agrees to rounding.
    eps = 5e-5 if dtype == torch.float32 else 1e-12

    def close(x: torch.Tensor, y: torch.Tensor) -> None:
        torch.testing.assert_close(x, y, rtol=eps, atol=eps * float(y.detach().abs().max()))

    close(ours, ref)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    close(a1.grad, a2.grad)
    close(b1.grad, b2.grad)
    if dtype == torch.float64:
        x = a[:9].clone().requires_grad_()
        y = b[:7].clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda u, v: losses.lp_similarity_matrix(u, v, p), (x, y))


@pytest.mark.parametrize("similarity,p", CASES)
@pytest.mark.parametrize("fused", [True, False])
def test_blockwise_info_nce_matches_naive_across_many_row_blocks(
    monkeypatch, similarity, p, fused
) -> None:
    import clinvert.losses as losses

    monkeypatch.setattr(losses, "LOGIT_BLOCK_ELEMENTS", 100)  # 3 rows per block of 31 columns
    monkeypatch.setattr(losses, "USE_FUSED_KERNELS", fused and losses.USE_FUSED_KERNELS)
    a, b = noisy_pairs(11, 31, 4, 0.2, similarity)
    for tau in (1e-3, 0.5):  # tiny tau: logits in the thousands, the softmax nearly one-hot
        assert_matches_naive(a, b, similarity, p, tau)


@pytest.mark.parametrize("similarity,p", [("cosine", 2.0), ("lp", 2.0)])
@pytest.mark.parametrize("bounded,saved", [(True, True), (True, False), (False, False)])
def test_bounded_dot_path_and_row_maximum_path_both_match_naive(
    monkeypatch, similarity, p, bounded, saved
) -> None:
    import clinvert.losses as losses

    monkeypatch.setattr(losses, "LOGIT_BLOCK_ELEMENTS", 100)  # 3 rows per block of 31 columns
    monkeypatch.setattr(losses, "BOUNDED_SPAN", 1e9 if bounded else -1.0)
    # the bounded path's backward from the forward's saved exponentials, or recomputed
    monkeypatch.setattr(losses, "SAVED_WEIGHTS_ELEMENTS", 1 << 30 if saved else 0)
    chosen, kept = [], []
    real, real_backward = losses._dot_bounds, losses._bounded_backward

    def spy(*args):
        bounds = real(*args)
        chosen.append(bounds is not None)
        return bounds

    def spy_backward(*args):
        kept.append(args[-1] is not None)
        return real_backward(*args)

    monkeypatch.setattr(losses, "_dot_bounds", spy)
    monkeypatch.setattr(losses, "_bounded_backward", spy_backward)
    a, b = noisy_pairs(3, 31, 4, 0.2, similarity)
    assert_matches_naive(a, b, similarity, p, 0.5)
    assert chosen == [bounded]
    assert kept == ([saved] if bounded else [])


def test_saved_weights_are_not_kept_without_gradients() -> None:
    import clinvert.losses as losses

    a, b = noisy_pairs(3, 31, 4, 0.2, "cosine")
    out = losses._FusedInfoNCE.apply(a, b, None, "dot", 2.0, None, 0)  # no input needs a gradient
    assert out.grad_fn is None
    x = a.clone().requires_grad_()
    out = losses._FusedInfoNCE.apply(x, b, None, "dot", 2.0, None, 0)
    assert [t.shape for t in out.grad_fn.saved_tensors[-2:]] == [(31, 31), (31,)]


def test_bounded_path_only_where_exp_cannot_underflow() -> None:
    from clinvert.losses import BOUNDED_SPAN, _dot_bounds

    a = torch.nn.functional.normalize(
        torch.randn(6144, 10, generator=torch.Generator().manual_seed(0))
    )
    # unit vectors, tau 0.1: logits within 2 / tau = 20 of their bound, + log B = 28.7 <= 80
    shift, span = _dot_bounds(a / 0.1, a, None)
    assert span == pytest.approx(20.0, rel=1e-5) and span + math.log(6144) <= BOUNDED_SPAN
    assert torch.allclose(shift, torch.full((6144,), 10.0), rtol=1e-5)
    assert _dot_bounds(a / 0.02, a, None) is None  # 2 / tau = 100: the row-maximum path
    assert (
        _dot_bounds(a / 0.1, a, torch.zeros(6144).index_fill_(0, torch.tensor([0]), -60.0)) is None
    )
