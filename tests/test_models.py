"""Encoder, heads and input normalisation."""

from __future__ import annotations

import pytest
import torch

from clinvert.models import InputNorm, make_model
from clinvert.models.blockwise import blockwise_mlp
from clinvert.models.heads import BoxHead, SphereHead, UnboundedHead
from clinvert.models.mlp import MLPEncoder


def test_paper_encoder_shapes_and_widths() -> None:
    model = make_model(10, 10, "unbounded")
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [100, 500, 500, 500, 500, 100, 10]
    assert model(torch.randn(7, 10)).shape == (7, 10)


def test_heads_put_outputs_in_their_space() -> None:
    h = torch.randn(100, 5) * 10
    sphere = SphereHead(5, radius=2.0, learnable=True)
    torch.testing.assert_close(sphere(h).norm(dim=1), torch.full((100,), 2.0))
    assert any(p.requires_grad for p in sphere.parameters())
    box = BoxHead(5, bound=3.0)
    out = box(h)
    assert (out >= 0).all() and (out <= 3.0).all() and not list(box.parameters())
    plain = UnboundedHead(5)
    assert plain(h) is h and not list(plain.parameters()) and not plain.state_dict()
    scaled = UnboundedHead(5, scale=0.05, learnable=True)
    torch.testing.assert_close(scaled(h), 0.05 * h)
    (scaled(h).sum()).backward()
    assert scaled.log_scale.grad is not None


@pytest.mark.parametrize("kind", ["whiten", "standardize"])
def test_input_norm_whitens_observations(kind) -> None:
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(4, 4, generator=gen) * torch.tensor([10.0, 1.0, 0.1, 0.01])
    x = torch.randn(50_000, 4, generator=gen) @ mixing + 3.0
    y = InputNorm(4, kind).fit(x)(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-3, rtol=0)
    cov = torch.cov(y.T.double())
    if kind == "whiten":
        torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=1e-3, rtol=0)
    else:
        torch.testing.assert_close(
            cov.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-3, rtol=0
        )


def test_input_norm_none_is_identity_and_rejects_unknown_kinds() -> None:
    x = torch.randn(10, 3)
    assert torch.equal(InputNorm(3, "none").fit(x)(x), x)
    with pytest.raises(ValueError, match="input_norm"):
        InputNorm(3, "pca")


@pytest.mark.parametrize("rows", [256, 1000, 4096])
def test_blockwise_mlp_matches_the_layer_by_layer_stack(rows) -> None:
    """Values and first derivatives (input, weights, biases) equal the plain stack's, for blocks
    that divide the batch, leave a ragged last block, or hold the whole batch (float64: the sums
    differ only in their order, so the tolerance is rounding)."""
    torch.manual_seed(0)
    enc = MLPEncoder(4, 3, widths=(10, 50, 10)).double()
    x = torch.randn(2300, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2300, 3, dtype=torch.float64)
    grads = {}
    for mode in (False, True):
        enc.blockwise, enc.block_rows = mode, rows
        out = enc(x)
        (gx, *gp) = torch.autograd.grad((out * weight).sum(), [x, *enc.parameters()])
        grads[mode] = (out.detach(), gx, gp)
    plain, block = grads[False], grads[True]
    torch.testing.assert_close(block[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(block[1], plain[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(block[2], plain[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_blockwise_mlp_is_used_only_where_it_applies() -> None:
    """Training on the CPU takes the blockwise function; evaluation and a zero slope do not."""
    enc = MLPEncoder(3, 2, widths=(4, 4))
    x = torch.randn(8, 3)
    assert enc(x).grad_fn.name() == "_BlockwiseMLPBackward"
    with torch.no_grad():
        assert enc(x).grad_fn is None
    relu = MLPEncoder(3, 2, widths=(4, 4), negative_slope=0.0)
    assert not relu.blockwise and relu(x).grad_fn.name() != "_BlockwiseMLPBackward"
    with pytest.raises(ValueError, match="negative_slope"):
        blockwise_mlp(x, [enc.net[0].weight], [enc.net[0].bias], 0.0, 4)


def test_conv_encoders_shapes_parameters_and_batch_norm() -> None:
    """``conv`` is SlowVAE's encoder unchanged; ``conv-wide`` doubles its channels and adds BatchNorm
    (whose running statistics make eval-mode outputs independent of the rest of the batch)."""
    from clinvert.models.conv import ConvEncoder

    conv = make_model(3, 10, "unbounded", encoder="conv", input_norm="none")
    wide = make_model(3, 10, "unbounded", encoder="conv-wide", input_norm="none")
    assert sum(p.numel() for p in conv.parameters()) == 381_386
    assert sum(p.numel() for p in wide.parameters()) == 1_516_810
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in conv.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in wide.modules()) == 4
    for size in (8, 48, 64, 96):
        x = torch.rand(4, 3, size, size)
        assert conv(x).shape == wide(x).shape == (4, 10)
    wide.eval()
    x = torch.rand(4, 3, 64, 64)
    assert torch.allclose(wide(x)[:2], wide(x[:2]), atol=1e-6)
    assert ConvEncoder(1, 6, channels=(8, 16), hidden=32)(torch.rand(2, 1, 32, 32)).shape == (2, 6)
