"""Masked reductions: sums, means, variances and whitening over the entries a mask selects.

Conventions (shared by every function here):

- ``mask`` is ``torch.bool`` with the shape of ``x``; True means *use this entry*.
- Masked-out entries are never read: they go through ``torch.where`` before any arithmetic, so
  NaN/inf garbage there changes neither the result nor any gradient.
- Results are computed in ``float32``, or in the input's floating dtype when that is wider
  (``float64`` stays ``float64``; ``bfloat16``/``float16``/integer/bool inputs give ``float32``).
- Empty selections are not errors: a mean over no entries is ``0``, a variance over fewer entries
  than it needs is ``0``. Token-level losses follow the same rule, so a batch with nothing to train
  gives a zero loss rather than NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

Dim = int | tuple[int, ...] | None


def float_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: ``float32`` promoted with every floating input's dtype."""
    dtype = torch.float32
    for tensor in tensors:
        if tensor.is_floating_point():
            dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def check_mask(mask: Tensor, like: Tensor, *, name: str = "mask", like_name: str = "x") -> None:
    """Raise unless ``mask`` is a bool tensor with the shape of ``like``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a torch.bool tensor (True = use this entry), got {mask.dtype}")
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but {like_name} has shape {tuple(like.shape)}"
        )


def _select(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask`` holds and ``0`` elsewhere, in the compute dtype (masked garbage unread)."""
    x = x.to(float_dtype(x))
    return torch.where(mask, x, 0.0)


def masked_sum(x: Tensor, mask: Tensor, dim: Dim = None) -> Tensor:
    """``sum_i x_i`` over the entries with ``mask_i`` True.

    Args:
        x: ``Tensor[...]``, any numeric dtype.
        mask: ``Tensor[...]`` bool, the shape of ``x``.
        dim: reduce over these dimensions; ``None`` (default) reduces over all of them.

    Returns:
        The sum, a 0-dim tensor (``dim=None``) or ``x``'s shape without ``dim``; ``0`` where
        nothing is selected.
    """
    check_mask(mask, x)
    selected = _select(x, mask)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Dim = None) -> Tensor:
    """``sum_i mask_i x_i / max(1, sum_i mask_i)``: the mean over the selected entries.

    Args:
        x: ``Tensor[...]``, any numeric dtype.
        mask: ``Tensor[...]`` bool, the shape of ``x``.
        dim: reduce over these dimensions; ``None`` (default) reduces over all of them.

    Returns:
        The mean; ``0`` (not NaN) where nothing is selected.
    """
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.to(total.dtype).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over all selected entries: ``sum_i mask_i (x_i - mean)^2 / (n - 1)`` (or ``/ n``).

    ``n = sum_i mask_i`` and ``mean = masked_mean(x, mask)``. With ``unbiased=True`` the Bessel
    correction divides by ``n - 1``. Computed in two passes (mean, then squared deviations).

    Args:
        x: ``Tensor[...]``.
        mask: ``Tensor[...]`` bool, the shape of ``x``.
        unbiased: divide by ``n - 1`` (True, default) or ``n``.

    Returns:
        A 0-dim tensor; ``0`` when ``n = 0``, and when ``n = 1`` with ``unbiased=True``.
    """
    mean = masked_mean(x, mask)
    deviation = torch.where(mask, _select(x, mask) - mean, 0.0)
    count = mask.sum().to(mean.dtype)
    return deviation.square().sum() / (count - (1 if unbiased else 0)).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x_i - mean) / sqrt(var + eps)`` over the selected entries, ``0`` under the mask.

    ``mean`` and ``var`` (unbiased) are taken over all selected entries together (e.g. every policy
    token of a step). With ``shift_mean=False`` the mean is added back: ``(x_i - mean) /
    sqrt(var + eps) + mean``, i.e. only the scale is normalised.

    Args:
        x: ``Tensor[...]``.
        mask: ``Tensor[...]`` bool, the shape of ``x``.
        shift_mean: subtract the mean (True, default) or keep it.
        eps: added to the variance before the square root.

    Returns:
        ``Tensor[...]`` the shape of ``x``. A selection of one entry (variance ``0``) whitens to
        ``0`` (``mean`` with ``shift_mean=False``); an empty one gives all zeros.
    """
    selected = _select(x, mask)
    mean = masked_mean(selected, mask)
    whitened = (selected - mean) * torch.rsqrt(masked_var(selected, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[returns - values] / Var[returns]`` over the selected entries (detached).

    ``1`` is a perfect value function, ``0`` one no better than a constant, negative worse than
    that. When ``Var[returns]`` is zero (an empty or one-entry selection, or constant returns; up to
    float rounding: ``Var[returns] <= eps_float * mean(returns^2)``) the ratio is undefined and the
    result is ``0.0``: always finite, so it is safe to log and average.

    Args:
        values: ``Tensor[...]`` predicted values.
        returns: ``Tensor[...]`` targets, the shape of ``values``.
        mask: ``Tensor[...]`` bool, the shape of ``values``.

    Returns:
        A detached 0-dim tensor.
    """
    check_mask(mask, values, like_name="values")
    check_mask(mask, returns, like_name="returns")
    with torch.no_grad():
        target = _select(returns, mask)
        residual = target - _select(values, mask)
        var_returns = masked_var(target, mask, unbiased=False)
        threshold = torch.finfo(var_returns.dtype).eps * masked_mean(target.square(), mask)
        degenerate = var_returns <= threshold
        ratio = masked_var(residual, mask, unbiased=False) / torch.where(degenerate, 1.0, var_returns)
        return torch.where(degenerate, 0.0, 1.0 - ratio)
