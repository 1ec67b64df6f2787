"""The InfoNCE family as pure functions, with thin ``nn.Module`` wrappers.

For anchors a_i = f(x_i) and positives p_i = f(x~_i), i = 1..B, with the other positives as negatives:

    L = mean_i [ -log softmax_j( s(a_i, p_j) / tau )[i] ]
      = mean_i [ -s(a_i, p_i) / tau ] + mean_i [ logsumexp_j s(a_i, p_j) / tau ]
      =          alignment             +     (uniformity + log B)

Similarities (registry ``SIMILARITIES``, keyed by config name):

* ``cosine``: s(a, b) = a^T b. Inputs are used as given; putting them on a sphere is the head's job.
* ``lp``: s(a, b) = -||a - b||_p^p, p >= 1.

Nothing here materialises a [B, B, d] tensor: similarities go through a matrix product or
``torch.cdist``, which stream over d.

Reference: Zimmermann et al., Contrastive Learning Inverts the Data Generating Process, ICML 2021,
eq. (1); van den Oord et al., 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clinvert import kernels
from clinvert.registry import SIMILARITIES


def cosine_similarity_matrix(a: Tensor, b: Tensor, p: float = 2.0) -> Tensor:
    """s_ij = a_i^T b_j, [B, d] x [M, d] -> [B, M]. ``p`` is ignored."""
    return a @ b.T


#: Elements of one [rows, M, d] block of differences in the blockwise L_p similarity (16 MiB float32).
BLOCK_ELEMENTS = 1 << 22


def _row_blocks(rows: int, cols: int, dim: int):
    step = max(1, BLOCK_ELEMENTS // max(1, cols * dim))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


class _BlockwiseLp(torch.autograd.Function):
    """s_ij = -sum_k |a_ik - b_jk|^p, forward and backward over blocks of rows of ``a``.

    Only a [block, M, d] slice of the differences exists at any time (at most ``BLOCK_ELEMENTS``),
    and the backward recomputes it instead of storing it, so memory stays O(B M + block M d).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, p: float) -> Tensor:  # type: ignore[override]
        out = a.new_empty(a.shape[0], b.shape[0])
        for blk in _row_blocks(a.shape[0], b.shape[0], a.shape[1]):
            diff = (a[blk, None, :] - b[None, :, :]).abs_()  # [block, M, d]
            out[blk] = -(diff if p == 1.0 else diff.pow_(p)).sum(-1)
        ctx.save_for_backward(a, b)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        p = ctx.p
        grad_a = torch.zeros_like(a) if ctx.needs_input_grad[0] else None
        grad_b = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        for blk in _row_blocks(a.shape[0], b.shape[0], a.shape[1]):
            diff = a[blk, None, :] - b[None, :, :]  # [block, M, d]
            # d s_ij / d a_ik = -p |a_ik - b_jk|^(p-1) sign(a_ik - b_jk) = -d s_ij / d b_jk
            if p == 1.0:
                slope = diff.sign_()
            elif p == 2.0:
                slope = diff.mul_(2.0)
            else:
                slope = diff.sign() * diff.abs_().pow_(p - 1.0) * p
            weighted = slope.mul_(grad[blk, :, None])  # [block, M, d]
            if grad_a is not None:
                grad_a[blk] = -weighted.sum(1)
            if grad_b is not None:
                grad_b += weighted.sum(0)
        return grad_a, grad_b, None


class _FusedLp(torch.autograd.Function):
    """s_ij = -sum_k |a_ik - b_jk|^p through the fused numba kernels of :mod:`clinvert.kernels`
    (CPU): one pass over (i, j, k) forward and one backward, nothing of size [B, M, d]."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, p: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, b)
        ctx.p = p
        return kernels.lp_forward(a, b, p)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        grad_a, grad_b = kernels.lp_backward(a, b, grad, ctx.p)
        return grad_a, grad_b, None


#: Use the fused numba kernels for L_p on the CPU (integer p; numba installed). Tests flip this to
#: check both paths against the naive formula.
USE_FUSED_KERNELS = kernels.AVAILABLE
FUSED_P = (1.0, 3.0, 4.0)


def _fused_ok(a: Tensor, b: Tensor, p: float) -> bool:
    return (
        USE_FUSED_KERNELS
        and p in FUSED_P
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dtype in (torch.float32, torch.float64)
        and a.dtype == b.dtype
    )


def lp_similarity_matrix(a: Tensor, b: Tensor, p: float = 2.0) -> Tensor:
    """s_ij = -||a_i - b_j||_p^p, [B, d] x [M, d] -> [B, M], without a [B, M, d] tensor.

    p = 2 is one matrix product. On the CPU, p = 1, 3, 4 use fused numba kernels (at B = 6144,
    d = 10, 2 cores: L1 forward+backward ~0.37 s against ~1.5 s for ``torch.cdist``); elsewhere
    p = 1 is ``torch.cdist`` and other p run blockwise in torch (see ``_BlockwiseLp``).
    """
    if p != 2.0 and _fused_ok(a, b, p):
        return _FusedLp.apply(a, b, float(p))
    if p == 1.0:
        return -torch.cdist(a, b, p=1.0)
    if p == 2.0:
        # ||a||^2 + ||b||^2 - 2 a.b: one matrix product, exact gradient at zero distance.
        sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
        return -sq.clamp_min(0.0)
    return _BlockwiseLp.apply(a, b, float(p))


def lp_similarity_pairs(a: Tensor, b: Tensor, p: float = 2.0) -> Tensor:
    """s(a_i, b_i) = -||a_i - b_i||_p^p row by row, [B, d] x [B, d] -> [B]."""
    return -(a - b).abs().pow(p).sum(-1)


def cosine_similarity_pairs(a: Tensor, b: Tensor, p: float = 2.0) -> Tensor:
    """s(a_i, b_i) = a_i^T b_i row by row, [B, d] x [B, d] -> [B]."""
    return (a * b).sum(-1)


@dataclass(frozen=True)
class Similarity:
    """A similarity s(a, b) of the InfoNCE family, as registered in ``SIMILARITIES``.

    Attributes:
        matrix: ``matrix(a, b, p) -> [B, M]``, s(a_i, b_j) for [B, d] and [M, d] inputs.
        pairs: ``pairs(a, b, p) -> [B]``, s(a_i, b_i) row by row (None: the diagonal of ``matrix``).
        fused: ``"cosine"`` or ``"lp"`` for the two built-ins, which take the fused blockwise paths
            of :func:`info_nce`; None (a user's similarity): the loss is the plain log-softmax of
            ``matrix(a, b, p) / tau``, differentiated by autograd.
        outputs: the ``model.output`` heads it is defined for (None: every head).
        uses_p: whether ``model.p`` is a parameter of it.
    """

    matrix: Callable[..., Tensor]
    pairs: Callable[..., Tensor] | None = None
    fused: str | None = None
    outputs: tuple[str, ...] | None = None
    uses_p: bool = False

    def paired(self, a: Tensor, b: Tensor, p: float) -> Tensor:
        """s(a_i, b_i) row by row, [B]."""
        if self.pairs is not None:
            return self.pairs(a, b, p)
        return self.matrix(a, b, p).diagonal()


SIMILARITIES.register(
    "cosine",
    Similarity(cosine_similarity_matrix, cosine_similarity_pairs, "cosine", ("sphere",)),
)
SIMILARITIES.register(
    "lp", Similarity(lp_similarity_matrix, lp_similarity_pairs, "lp", None, uses_p=True)
)


def register_similarity(
    name: str,
    matrix: Callable[..., Tensor] | None = None,
    *,
    pairs: Callable[..., Tensor] | None = None,
    outputs: tuple[str, ...] | None = None,
    uses_p: bool = False,
) -> Any:
    """Register a similarity ``matrix(a, b, p) -> [B, M]`` under ``name`` (usable as a decorator).

    The config field ``model.similarity`` accepts ``name`` from then on, and :func:`info_nce` trains
    with it through autograd (the fused kernels serve the built-in ``cosine`` and ``lp`` only).

    Example:
        >>> @register_similarity("neg_sq_l2_doc")
        ... def neg_sq_l2(a, b, p):
        ...     return -torch.cdist(a, b) ** 2
        >>> float(info_nce(torch.zeros(4, 2), torch.zeros(4, 2), similarity="neg_sq_l2_doc"))
        1.3862943649291992
    """

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        SIMILARITIES.register(name, Similarity(fn, pairs, None, outputs, uses_p))
        return fn

    return add if matrix is None else add(matrix)


def _check(
    anchor: Tensor,
    positive: Tensor,
    similarity: str,
    p: float,
    tau: float,
    offset: int | None = None,
) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(
            f"similarity must be one of {', '.join(SIMILARITIES.names())}, got {similarity!r}"
        )
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    if SIMILARITIES.get(similarity).fused == "lp" and not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1 for the lp similarity, got {p}")
    if offset is None:
        if anchor.ndim != 2 or anchor.shape != positive.shape:
            raise ValueError(
                "anchor and positive must both have shape [B, d], got "
                f"{tuple(anchor.shape)} and {tuple(positive.shape)}"
            )
        return
    if anchor.ndim != 2 or positive.ndim != 2 or anchor.shape[1] != positive.shape[1]:
        raise ValueError(
            "anchor and positive must have shapes [B, d] and [M, d], got "
            f"{tuple(anchor.shape)} and {tuple(positive.shape)}"
        )
    if not 0 <= offset <= positive.shape[0] - anchor.shape[0]:
        raise ValueError(
            f"offset must be in 0..{positive.shape[0] - anchor.shape[0]} (M - B), got {offset}"
        )


def logits(
    anchor: Tensor,
    positive: Tensor,
    *,
    similarity: str = "cosine",
    p: float = 2.0,
    tau: float = 1.0,
) -> Tensor:
    """The [B, B] matrix s(anchor_i, positive_j) / tau."""
    _check(anchor, positive, similarity, p, tau)
    return SIMILARITIES.get(similarity).matrix(anchor, positive, p) / tau


def info_nce(
    anchor: Tensor,
    positive: Tensor,
    *,
    similarity: str = "cosine",
    p: float = 2.0,
    tau: float = 1.0,
    self_negative: bool = False,
    offset: int | None = None,
) -> Tensor:
    """InfoNCE: mean_i [ -log softmax_j( s(anchor_i, positive_j) / tau )[i] ].

    Args:
        anchor: [B, d] encodings of the anchors.
        positive: [B, d] encodings of their positive partners; row j != i is a negative for anchor i.
            With ``offset``: [M, d], M >= B, anchor i's positive is row ``offset + i`` and every
            other row is a negative (the rows of a data-parallel rank against the gathered
            positives of all ranks: the mean over this rank's rows of the global batch's loss).
        similarity: ``"cosine"`` (s = a.b, inputs used as given) or ``"lp"`` (s = -||a - b||_p^p).
        p: exponent of the ``lp`` similarity, >= 1.
        tau: temperature, > 0.
        self_negative: also count each anchor among its own negatives: the term
            exp(s(anchor_i, anchor_i) / tau) joins row i's denominator (exp(0) = 1 for ``lp``), as in
            the paper's code, whose negatives are the anchors themselves, row i's own included. The
            loss is then at least the alignment term: it cannot fall to 0 by growing the output
            scale once every positive is nearer than every negative (the saturation in which the
            plain loss, log(1 + sum_j!=i exp((s_ij - s_ii) / tau)), stops giving gradient).

    Returns:
        The scalar loss.

    Example:
        >>> a = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
        >>> float(info_nce(a, a, tau=0.1)) < float(info_nce(a, a.roll(1, 0), tau=0.1))
        True
    """
    _check(anchor, positive, similarity, p, tau, offset)
    offset = offset or 0
    if SIMILARITIES.get(similarity).fused is None:
        return _plain_info_nce(anchor, positive, similarity, p, tau, self_negative, offset)
    # The self term's logit in each path's convention (None: no self term). Cosine: a.a / tau. L2:
    # the dot path drops -||a_i||^2 / tau from row i, so the self term's 0 becomes +||a_i||^2 / tau.
    # Other L_p: 0. Its gradient flows through autograd into the anchor.
    extra = None
    if self_negative:
        if SIMILARITIES.get(similarity).fused == "cosine" or p == 2.0:
            extra = (anchor * anchor).sum(-1) / tau
        else:
            extra = anchor.new_zeros(anchor.shape[0])
    kind = SIMILARITIES.get(similarity).fused
    if kind == "cosine":  # s/tau = (a/tau) . b: scale the [B, d] input, not the [B, B] matrix
        return _FusedInfoNCE.apply(anchor / tau, positive, None, "dot", 2.0, extra, offset)
    if p == 2.0:
        # -||a_i - b_j||^2 / tau = (2 a_i . b_j - ||b_j||^2) / tau - ||a_i||^2 / tau; the last term
        # is constant along each row of the softmax, so it cancels in the loss exactly.
        bias = -(positive * positive).sum(-1) / tau
        return _FusedInfoNCE.apply(anchor * (2.0 / tau), positive, bias, "dot", 2.0, extra, offset)
    # ||a - b||_p^p / tau = ||a / tau^(1/p) - b / tau^(1/p)||_p^p
    scale = tau ** (-1.0 / p)
    return _FusedInfoNCE.apply(
        anchor * scale, positive * scale, None, "lp", float(p), extra, offset
    )


def _plain_info_nce(
    anchor: Tensor,
    positive: Tensor,
    similarity: str,
    p: float,
    tau: float,
    self_negative: bool,
    offset: int = 0,
) -> Tensor:
    """InfoNCE of a registered similarity without a fused path: log-softmax of the [B, M] logits."""
    scores = SIMILARITIES.get(similarity).matrix(anchor, positive, p) / tau  # [B, M]
    positive_logit = scores.diagonal(offset)
    if self_negative:
        own = SIMILARITIES.get(similarity).paired(anchor, anchor, p) / tau
        scores = torch.cat([scores, own[:, None]], dim=1)
    return (torch.logsumexp(scores, dim=1) - positive_logit).mean()


#: Elements of one [rows, B] block of logits in the fused InfoNCE (8 MiB float32: stays in cache).
LOGIT_BLOCK_ELEMENTS = 1 << 21
#: Shifted logits are clamped here before ``exp``. exp(-50) = 1.9e-22 is far below float32's
#: resolution next to the row's largest term (exactly 1): clamped terms add at most B * 2e-22 to a
#: row sum >= 1. Two slow paths are avoided. The CPU's vectorised exp is slow for arguments that
#: underflow (at a small tau the logits are in the thousands: 30 ns per element instead of ~1,
#: measured for L2 at tau = 0.005, B = 6144). And denormal products: the backward multiplies the
#: softmax weights by grad / B (~1.6e-4); with a floor of -80 that gave values near 3e-39, and every
#: matmul touching them took the denormal slow path in the threads that do not flush denormals (the
#: flag is per thread; the trainer can set it only in its own): the L2 step's backward at B = 6144 on
#: two threads took 1.77 s instead of ~0.5 s.
EXP_FLOOR = -50.0


def _block_logits(a: Tensor, b: Tensor, bias: Tensor | None, kind: str, p: float) -> Tensor:
    if kind == "dot":
        return a @ b.T if bias is None else torch.addmm(bias, a, b.T)
    return lp_similarity_matrix(a, b, p)


def _block_grads(
    a: Tensor, b: Tensor, weights: Tensor, kind: str, p: float
) -> tuple[Tensor, Tensor]:
    """(d/da, d/db) of sum_ij weights_ij s_ij for one block of rows of ``a``."""
    if kind == "dot":  # skinny side first, as in _bounded_backward (2-3x faster with MKL)
        return (b.T @ weights.T).T, (a.T @ weights).T
    if _fused_ok(a, b, p):
        return kernels.lp_backward(a, b, weights, p)
    with torch.enable_grad():
        x, y = a.detach().requires_grad_(), b.detach().requires_grad_()
        ga, gb = torch.autograd.grad(lp_similarity_matrix(x, y, p), (x, y), weights)
    return ga, gb


#: Largest [rows, B] weight matrix (elements) that the bounded "dot" path keeps from its forward for
#: the backward instead of recomputing it (16 MiB float32: B = 2048 on one process). Below it the
#: backward is two products against the saved exponentials; above it the memory would cost more
#: than the product and ``exp`` it saves. Measured in ``benchmarks/compare_loss_paths.py``.
SAVED_WEIGHTS_ELEMENTS = 1 << 22

#: Largest spread (max - min over a row, plus log B) of the logits for which the bounded "dot" path
#: runs: every shifted logit and every log-softmax value stays above -80, so ``exp`` gives normal
#: floats (float32's smallest is exp(-87.3)) and needs neither a row maximum nor a floor.
BOUNDED_SPAN = 80.0


def _dot_bounds(a: Tensor, b: Tensor, bias: Tensor | None) -> tuple[Tensor, float] | None:
    """Per-row upper bounds of s_ij = a_i . b_j (+ bias_j) by Cauchy-Schwarz, when the spread they
    leave is small enough for ``exp`` without a row maximum.

    Returns ``(shift, span)``: ``shift_i >= max_j s_ij`` and ``span >= max_ij (shift_i - s_ij)``,
    or None when the span (plus log B) exceeds ``BOUNDED_SPAN`` or the inputs are not on the CPU
    (deciding needs the bound's value on the host: one sync per step on an accelerator, where the
    row-maximum path costs little anyway). At the sphere rows' temperatures (cosine, tau >= 0.1,
    unit vectors: span 2 / tau) it holds; at the small L2 temperatures of the box rows it does not.
    """
    if a.device.type != "cpu":
        return None
    norms = a.norm(dim=1)
    b_max = b.norm(dim=1).max()
    hi, lo = (bias.max(), bias.min()) if bias is not None else (0.0, 0.0)
    span = float(2.0 * norms.max() * b_max + (hi - lo))
    if not span + math.log(b.shape[0]) <= BOUNDED_SPAN:  # also False for NaN
        return None
    return norms * b_max + hi, span


def _augmented(a: Tensor, b: Tensor, bias: Tensor | None, shift: Tensor) -> tuple[Tensor, Tensor]:
    """[a, -shift, 1] and [b, 1, bias]: their product is a_i . b_j + bias_j - shift_i, one matmul."""
    cols_a = [a, -shift[:, None]]
    cols_b = [b, b.new_ones(b.shape[0], 1)]
    if bias is not None:
        cols_a.append(a.new_ones(a.shape[0], 1))
        cols_b.append(bias[:, None])
    return torch.cat(cols_a, 1), torch.cat(cols_b, 1)


class _FusedInfoNCE(torch.autograd.Function):
    """mean_i [logsumexp_j s_ij - s_ii] over blocks of rows: s_ij = a_i . b_j (+ bias_j) or
    -||a_i - b_j||_p^p, with the temperature already folded into the inputs.

    Only one [rows, B] block of logits exists at a time (``LOGIT_BLOCK_ELEMENTS``); the backward
    recomputes each block, turns it into softmax weights and contracts them with the inputs, the way
    attention kernels do. Memory O(block B) instead of several [B, B] matrices, and each block's
    passes run in cache. The exception is the bounded path at small batches: up to
    ``SAVED_WEIGHTS_ELEMENTS`` it keeps the forward's exponentials (one [rows, B] matrix) for the
    backward, where recomputing them cost more than reading them back.

    The bounded "dot" path (:func:`_dot_bounds`): when the logits' spread is known to be small, the
    shift (a per-row upper bound instead of the row maximum, and in the backward the log-sum-exp)
    rides in the matrix product as an extra column, so a block costs one product, one ``exp`` and
    one sum: no maximum, subtraction, floor, one-hot or scaling pass over [rows, B]. The one-hot and
    the 1 / B scale are applied to the [rows, d] results instead.

    ``extra`` (optional, [rows]): one more logit per row that joins the row's log-sum-exp but is
    no column of ``b`` (the self term of ``info_nce(..., self_negative=True)``); its gradient is
    returned for autograd to carry back to whatever computed it. It turns the bounded path off.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        a: Tensor,
        b: Tensor,
        bias: Tensor | None,
        kind: str,
        p: float,
        extra: Tensor | None,
        offset: int = 0,
    ) -> Tensor:
        rows = a.shape[0]
        own = slice(offset, offset + rows)  # the columns of the rows' own positives
        step = max(1, LOGIT_BLOCK_ELEMENTS // max(1, b.shape[0]))
        # The bounded path's no-denormal guarantee holds for the B columns only: off with ``extra``.
        bounds = _dot_bounds(a, b, bias) if kind == "dot" and extra is None else None
        ctx.bounded = bounds is not None
        saved = None
        if bounds is not None:
            shift = bounds[0]
            a_aug, b_aug = _augmented(a, b, bias, shift)
            totals = torch.empty_like(shift)
            # keep the exponentials for the backward when they are small enough (and wanted)
            keep = any(ctx.needs_input_grad[:3]) and rows * b.shape[0] <= SAVED_WEIGHTS_ELEMENTS
            saved = a.new_empty(rows, b.shape[0]) if keep else None
            for start in range(0, rows, step):
                blk = slice(start, min(rows, start + step))
                block = (
                    torch.mm(a_aug[blk], b_aug.T, out=saved[blk])
                    if saved is not None
                    else a_aug[blk] @ b_aug.T
                )
                totals[blk] = block.exp_().sum(dim=1)  # each term in [e^-span, 1]
            lse = shift + torch.log(totals)
            if saved is not None:
                # the backward's softmax weights are saved_ij / totals_i
                saved = (saved, totals.reciprocal_())
            diag = (a * b[own]).sum(dim=1) + (bias[own] if bias is not None else 0.0)
        else:
            lse = a.new_empty(rows)
            diag = a.new_empty(rows)
            for start in range(0, rows, step):
                blk = slice(start, min(rows, start + step))
                s = _block_logits(a[blk], b, bias, kind, p)
                idx = torch.arange(blk.start, blk.stop, device=a.device)
                diag[blk] = s[idx - blk.start, idx + offset]
                top = s.amax(dim=1, keepdim=True)
                total = s.sub_(top).clamp_min_(EXP_FLOOR).exp_().sum(dim=1)
                lse[blk] = top.squeeze(1) + torch.log(total)
        if extra is not None:
            lse = torch.logaddexp(lse, extra)
        ctx.save_for_backward(a, b, bias, lse, extra, *(saved or ()))
        ctx.kind, ctx.p, ctx.step, ctx.offset = kind, p, step, offset
        return (lse - diag).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, b, bias, lse, extra, *saved = ctx.saved_tensors
        rows = a.shape[0]
        scale = grad / rows
        if ctx.bounded:
            grads = _bounded_backward(a, b, bias, lse, scale, ctx.step, ctx.offset, saved or None)
            return (*grads, None, None)
        # d/d extra_i of logaddexp(lse_i, extra_i) is the extra term's own softmax weight.
        grad_extra = (extra - lse).exp_().mul_(scale) if extra is not None else None
        grad_a = torch.empty_like(a)
        grad_b = torch.zeros_like(b)
        grad_bias = torch.zeros_like(bias) if bias is not None else None
        for start in range(0, rows, ctx.step):
            blk = slice(start, min(rows, start + ctx.step))
            s = _block_logits(a[blk], b, bias, ctx.kind, ctx.p)
            weights = s.sub_(lse[blk, None]).clamp_min_(EXP_FLOOR).exp_()  # softmax over j
            idx = torch.arange(blk.start, blk.stop, device=a.device)
            weights[idx - blk.start, idx + ctx.offset] -= 1.0  # minus the positive's one-hot
            weights.mul_(scale)
            ga, gb = _block_grads(a[blk], b, weights, ctx.kind, ctx.p)
            grad_a[blk] = ga
            grad_b += gb
            if grad_bias is not None:
                grad_bias += weights.sum(0)
        return grad_a, grad_b, grad_bias, None, None, grad_extra, None


def _bounded_backward(
    a: Tensor,
    b: Tensor,
    bias: Tensor | None,
    lse: Tensor,
    scale: Tensor,
    step: int,
    offset: int = 0,
    saved: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, None, None]:
    """Gradients of the bounded "dot" path: softmax weights w_ij = exp(s_ij - lse_i) from one
    product (lse rides in as a column), then d/da_i = scale (sum_j w_ij b_j - b_(o+i)),
    d/db_j = scale (sum_i w_ij a_i - a_(j-o)), d/dbias_j = scale (sum_i w_ij - 1), the last terms
    only for the columns o .. o + rows - 1 that are some row's own positive (o = ``offset``).

    With ``saved`` = (E, r), the forward's exponentials E_ij = exp(s_ij - shift_i) and the
    reciprocals r_i of their row sums, w_ij = E_ij r_i is never formed: r scales the rows of the
    [rows, d] products instead, and nothing is recomputed.

    Every w_ij >= exp(-BOUNDED_SPAN): no floor is needed and no denormal reaches a product.
    """
    rows = a.shape[0]
    if saved is None:
        a_aug, b_aug = _augmented(a, b, bias, lse)
    grad_a = torch.empty_like(a)
    b_t = b.T.contiguous()
    wa_t = a.new_zeros(a.shape[1], b.shape[0])  # sum_i w_ij a_i, transposed: [d, B]
    w_sum = torch.zeros_like(bias) if bias is not None else None
    for start in range(0, rows, step):
        blk = slice(start, min(rows, start + step))
        if saved is None:
            weights, a_blk = (a_aug[blk] @ b_aug.T).exp_(), a[blk]  # softmax over j
        else:
            weights, row_scale = saved[0][blk], saved[1][blk, None]
            a_blk = a[blk] * row_scale
        # Both contractions with the skinny side (d columns) as the product's rows: [d, rows] x
        # [rows, B] took 0.35 ms where [B, rows] x [rows, d] took 1.11, and [d, B] x [B, rows] 0.66
        # where [rows, B] x [B, d] took 0.92 (a [341, 6144] block, 2 threads, MKL).
        grad_a[blk] = torch.mm(b_t, weights.T).T
        if saved is not None:
            grad_a[blk] *= row_scale
        wa_t.addmm_(a_blk.T, weights)
        if w_sum is not None:
            if saved is None:
                w_sum += weights.sum(0)
            else:
                w_sum.addmv_(weights.T, row_scale.squeeze(1))
    own = slice(offset, offset + rows)
    grad_a.sub_(b[own]).mul_(scale)
    grad_b = wa_t.T.contiguous()
    grad_b[own] -= a
    grad_b.mul_(scale)
    if w_sum is not None:
        w_sum[own] -= 1.0
    grad_bias = w_sum.mul_(scale) if w_sum is not None else None
    return grad_a, grad_b, grad_bias, None, None


def alignment(
    anchor: Tensor,
    positive: Tensor,
    *,
    similarity: str = "cosine",
    p: float = 2.0,
    tau: float = 1.0,
) -> Tensor:
    """Alignment term mean_i [ -s(anchor_i, positive_i) / tau ] (pulls positives together)."""
    _check(anchor, positive, similarity, p, tau)
    return -(SIMILARITIES.get(similarity).paired(anchor, positive, p) / tau).mean()


def uniformity(
    anchor: Tensor,
    positive: Tensor,
    *,
    similarity: str = "cosine",
    p: float = 2.0,
    tau: float = 1.0,
    self_negative: bool = False,
) -> Tensor:
    """Uniformity term mean_i [ logsumexp_j s(anchor_i, positive_j) / tau ] - log B.

    With these definitions ``info_nce == alignment + uniformity + log B`` exactly (for the same
    ``self_negative``, which adds s(anchor_i, anchor_i) / tau to row i's log-sum-exp); as B grows
    the uniformity term tends to the (negative) log-partition of the model's conditional.
    """
    scores = logits(anchor, positive, similarity=similarity, p=p, tau=tau)
    if self_negative:
        own = SIMILARITIES.get(similarity).paired(anchor, anchor, p) / tau
        scores = torch.cat([scores, own[:, None]], dim=1)
    return torch.logsumexp(scores, dim=1).mean() - math.log(positive.shape[0])


class InfoNCE(nn.Module):
    """``nn.Module`` wrapper of :func:`info_nce` with arguments checked at construction.

    Args:
        similarity: ``"cosine"`` or ``"lp"``.
        p: exponent of the ``lp`` similarity (>= 1); p = 1 matches Laplace, p = 2 Normal conditionals.
        tau: temperature (> 0).

    Example:
        >>> loss = InfoNCE("lp", p=1.0, tau=1.0)
        >>> float(loss(torch.zeros(4, 2), torch.zeros(4, 2))) == math.log(4)
        True
    """

    def __init__(
        self,
        similarity: str = "cosine",
        p: float = 2.0,
        tau: float = 1.0,
        self_negative: bool = False,
    ) -> None:
        super().__init__()
        _check(torch.zeros(1, 1), torch.zeros(1, 1), similarity, p, tau)
        self.similarity, self.p, self.tau = similarity, float(p), float(tau)
        self.self_negative = bool(self_negative)

    def forward(self, anchor: Tensor, positive: Tensor, offset: int | None = None) -> Tensor:
        """Scalar loss for [B, d] anchors and positives (or [M, d] positives with ``offset``: see
        :func:`info_nce`)."""
        return info_nce(
            anchor,
            positive,
            similarity=self.similarity,
            p=self.p,
            tau=self.tau,
            self_negative=self.self_negative,
            offset=offset,
        )

    def extra_repr(self) -> str:
        own = ", self_negative=True" if self.self_negative else ""
        return f"similarity={self.similarity!r}, p={self.p}, tau={self.tau}{own}"


LOSSES: dict[str, Callable[..., Tensor]] = {"info_nce": info_nce}
