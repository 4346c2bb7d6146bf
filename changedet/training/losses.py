"""Change-detection losses: pure ``(prediction, label, valid, *, opts) -> scalar`` functions.

Conventions for every loss here:
  * ``label``: int ``(N, H, W)``; 1 = change, 0 = no change. Any other value (e.g. an ignore
    index such as 255) is ignored like an invalid pixel; the label is never remapped before the
    mask is built.
  * ``valid``: bool ``(N, H, W)``; False on nodata and padding. Invalid pixels contribute nothing
    to the loss or its gradients, whatever their inputs and labels (non-finite inputs included:
    they are replaced before any arithmetic, so no NaN leaks through ``0 * nan``).
  * Empty batches (no valid pixel, or an absent class) give 0, never NaN.

Extreme inputs are clipped (distances to ``[0, MAX_DISTANCE]``, logits to ``+-MAX_LOGIT``) so the
loss stays finite for any float32 input; real models never get near these bounds.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from changedet.config import Distance
from changedet.errors import ConfigError
from changedet.models.siamese import distance as pixel_distance

__all__ = ["Mining", "MAX_DISTANCE", "MAX_LOGIT", "contrastive_loss", "masked_bce",
           "soft_dice_loss", "triplet_loss"]

Mining = Literal["batch_hard", "semi_hard", "all"]

#: Distances are clipped to ``[0, MAX_DISTANCE]`` (``d**2`` stays finite in float32).
MAX_DISTANCE = 1e6
#: Logits are clipped to ``[-MAX_LOGIT, MAX_LOGIT]`` (the BCE is linear, and finite, there).
MAX_LOGIT = 1e4


def _masks(label: ArrayLike, valid: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """(changed, unchanged) bool masks, both False wherever ``valid`` is False."""
    label = jnp.asarray(label)
    valid = jnp.asarray(valid, dtype=bool)
    return valid & (label == 1), valid & (label == 0)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over ``mask`` (0 when the mask is empty)."""
    count = jnp.sum(mask)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(count, 1)


def contrastive_loss(
    distance: ArrayLike,
    label: ArrayLike,
    valid: ArrayLike,
    *,
    margin: float,
    balance: bool = True,
) -> jax.Array:
    """Pixel-wise contrastive loss on embedding distances.

    Unchanged pixels cost ``d**2``; changed pixels ``max(0, margin - d)**2``.

    Args:
      distance: ``(N, H, W)`` float32 distances (>= 0), e.g. from ``SiameseNet`` with the
        distance head.
      label: ``(N, H, W)`` int, 1 = change, 0 = no change (other values ignored).
      valid: ``(N, H, W)`` bool.
      margin: Distance beyond which a changed pixel costs nothing (same units as ``distance``).
      balance: If True, the mean over unchanged and the mean over changed valid pixels are
        averaged (each class weighted 1/2; an absent class contributes 0). If False, the mean
        over all valid labelled pixels.

    Returns:
      Scalar float32 >= 0.

    Example:
      >>> d = jnp.array([[[0.0, 2.0]]]); lab = jnp.array([[[0, 1]]]); ok = jnp.ones((1, 1, 2), bool)
      >>> float(contrastive_loss(d, lab, ok, margin=1.0))
      0.0
    """
    changed, unchanged = _masks(label, valid)
    d = jnp.where(changed | unchanged, jnp.asarray(distance, jnp.float32), 0.0)
    d = jnp.clip(jnp.where(jnp.isnan(d), 0.0, d), 0.0, MAX_DISTANCE)
    pull = jnp.square(d)
    push = jnp.square(jax.nn.relu(margin - d))
    if balance:
        return 0.5 * _masked_mean(pull, unchanged) + 0.5 * _masked_mean(push, changed)
    per_pixel = jnp.where(changed, push, pull)
    return _masked_mean(per_pixel, changed | unchanged)


def masked_bce(
    logits: ArrayLike,
    label: ArrayLike,
    valid: ArrayLike,
    *,
    pos_weight: float = 1.0,
) -> jax.Array:
    """Binary cross-entropy on change logits, mean over valid labelled pixels.

    Args:
      logits: ``(N, H, W)`` float32 change logits.
      label: ``(N, H, W)`` int, 1 = change, 0 = no change (other values ignored).
      valid: ``(N, H, W)`` bool.
      pos_weight: Weight of changed pixels (> 0), e.g. ``#unchanged / #changed``.

    Returns:
      Scalar float32 >= 0 (``sum(w * bce) / #valid``), finite for any finite or infinite logit
      at invalid pixels and any finite logit at valid ones.

    Example:
      >>> float(masked_bce(jnp.array([[[100.0, -100.0]]]), jnp.array([[[1, 0]]]),
      ...                  jnp.ones((1, 1, 2), bool)))
      0.0
    """
    changed, unchanged = _masks(label, valid)
    labelled = changed | unchanged
    x = jnp.where(labelled, jnp.asarray(logits, jnp.float32), 0.0)
    x = jnp.clip(jnp.where(jnp.isnan(x), 0.0, x), -MAX_LOGIT, MAX_LOGIT)
    per_pixel = optax.sigmoid_binary_cross_entropy(x, changed.astype(jnp.float32))
    weights = jnp.where(changed, jnp.float32(pos_weight), 1.0)
    return _masked_mean(weights * per_pixel, labelled)


def soft_dice_loss(logits: ArrayLike, label: ArrayLike, valid: ArrayLike) -> jax.Array:
    """Soft Dice loss ``1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)`` over the batch's valid
    labelled pixels, with ``p = sigmoid(logits)``: a differentiable stand-in for ``1 - F1``.

    Pooled over the whole batch (not per patch), so patches without change still count, and
    the ``+ 1`` keeps it finite and 0 for a batch with neither change nor predicted change.

    Example:
      >>> round(float(soft_dice_loss(jnp.array([[[100.0, -100.0]]]), jnp.array([[[1, 0]]]),
      ...                            jnp.ones((1, 1, 2), bool))), 6)
      0.0
    """
    changed, unchanged = _masks(label, valid)
    labelled = changed | unchanged
    x = jnp.where(labelled, jnp.asarray(logits, jnp.float32), 0.0)
    x = jnp.clip(jnp.where(jnp.isnan(x), 0.0, x), -MAX_LOGIT, MAX_LOGIT)
    p = jnp.where(labelled, jax.nn.sigmoid(x), 0.0)
    y = changed.astype(jnp.float32)
    return 1.0 - (2.0 * jnp.sum(p * y) + 1.0) / (jnp.sum(p) + jnp.sum(y) + 1.0)


def _sample(key: jax.Array, mask: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """``num`` flat indices drawn uniformly with replacement from ``mask`` (static shape).

    Returns ``(indices, has_any)``; when the mask is empty the indices are arbitrary and
    ``has_any`` is False.
    """
    logits = jnp.where(mask.reshape(-1), 0.0, -jnp.inf)
    idx = jax.random.categorical(key, logits, shape=(num,))
    return idx, jnp.any(mask)


def triplet_loss(
    emb_before: ArrayLike,
    emb_after: ArrayLike,
    label: ArrayLike,
    valid: ArrayLike,
    *,
    margin: float,
    key: jax.Array,
    mining: Mining = "batch_hard",
    num_anchors: int = 256,
    num_negatives: int = 256,
    distance: Distance = "euclidean",
) -> jax.Array:
    """Pixel triplet loss between the two dates' embeddings, with sampled anchors.

    Anchors are embeddings of one date at unchanged valid pixels (half from ``before``, half
    from ``after``); the positive is the same pixel in the other date; negatives are the other
    date's embeddings at changed valid pixels. Anchors and negatives are sampled (uniformly,
    with replacement, using ``key``) so every shape is static under ``jit``.

    Args:
      emb_before: ``(N, H, W, D)`` float32 embeddings of the before date.
      emb_after: Same shape, the after date.
      label: ``(N, H, W)`` int, 1 = change, 0 = no change (other values ignored).
      valid: ``(N, H, W)`` bool.
      margin: Required gap ``d(a, n) - d(a, p)``.
      key: PRNG key for sampling.
      mining: ``"batch_hard"`` (closest negative per anchor), ``"semi_hard"`` (closest negative
        farther than the positive, else the closest) or ``"all"`` (mean over all triplets).
      num_anchors: Anchors sampled from unchanged pixels (static).
      num_negatives: Negatives sampled from changed pixels (static).
      distance: Embedding distance, as in the model config.

    Returns:
      Scalar float32 >= 0; 0 when the batch lacks changed or unchanged valid pixels.
    """
    changed, unchanged = _masks(label, valid)
    eb = jnp.asarray(emb_before, jnp.float32)
    ea = jnp.asarray(emb_after, jnp.float32)
    dim = eb.shape[-1]
    # Unlabelled/invalid pixels are zeroed before any gather: when a class is absent the
    # sampled indices are arbitrary, and 0 * nan would otherwise leak NaN into the gradients.
    labelled = (changed | unchanged).reshape(-1, 1)
    eb = jnp.where(labelled, eb.reshape(-1, dim), 0.0)
    ea = jnp.where(labelled, ea.reshape(-1, dim), 0.0)
    k_anchor, k_neg = jax.random.split(key)
    anchor_idx, has_anchor = _sample(k_anchor, unchanged, num_anchors)
    neg_idx, has_neg = _sample(k_neg, changed, num_negatives)
    # First half of the anchors from before (positives/negatives from after), second half the
    # other way round: the loss is symmetric in the dates on average.
    from_before = jnp.arange(num_anchors) < (num_anchors + 1) // 2
    anchor = jnp.where(from_before[:, None], eb[anchor_idx], ea[anchor_idx])
    positive = jnp.where(from_before[:, None], ea[anchor_idx], eb[anchor_idx])
    neg_after = ea[neg_idx]
    neg_before = eb[neg_idx]
    d_ap = pixel_distance(anchor, positive, distance)  # (A,)
    d_an = jnp.where(
        from_before[:, None],
        pixel_distance(anchor[:, None, :], neg_after[None, :, :], distance),
        pixel_distance(anchor[:, None, :], neg_before[None, :, :], distance),
    )  # (A, K)
    match mining:
        case "batch_hard":
            losses = jax.nn.relu(d_ap - jnp.min(d_an, axis=1) + margin)
        case "semi_hard":
            farther = d_an > d_ap[:, None]
            semi = jnp.min(jnp.where(farther, d_an, jnp.inf), axis=1)
            hardest = jnp.min(d_an, axis=1)
            d_neg = jnp.where(jnp.any(farther, axis=1), semi, hardest)
            losses = jax.nn.relu(d_ap - d_neg + margin)
        case "all":
            losses = jnp.mean(jax.nn.relu(d_ap[:, None] - d_an + margin), axis=1)
        case _:
            raise ConfigError(f"mining must be batch_hard, semi_hard or all; got {mining!r}")
    return jnp.where(has_anchor & has_neg, jnp.mean(losses), 0.0)
