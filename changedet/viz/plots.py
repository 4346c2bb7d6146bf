"""Training plots: the loss and validation curves of a run (``metrics.jsonl``) and precision-recall
curves (matplotlib, imported lazily).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.errors import ConfigError, InputNotFoundError
from changedet.io.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from changedet.viz.figures import _figure

__all__ = ["plot_loss_curve", "plot_pr_curve", "write_loss_curve"]


def _load_records(source: str | Path | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise InputNotFoundError(
                f"{path}: no such file; pass a training workdir's metrics.jsonl (written by fit)."
            )
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{path}:{number}: not a JSON line ({err.msg}); pass an intact metrics.jsonl."
                ) from err
        source_name = str(path)
    else:
        records = list(source)
        source_name = "records"
    if not records or not all("loss" in r for r in records):
        raise ConfigError(
            f"{source_name}: needs one record per epoch with 'epoch' and 'loss' (as fit writes); "
            f"got {len(records)} records."
        )
    return records


def plot_loss_curve(metrics: str | Path | Sequence[Mapping[str, Any]]) -> Figure:
    """Training loss and F1 (train and validation) per epoch.

    Args:
      metrics: Path to ``metrics.jsonl`` (or the training workdir holding it), or the records
        themselves: dicts with ``epoch``, ``loss`` and optionally ``train_f1``, ``val_f1``.

    Returns:
      Figure with the loss axes (left) and an F1 axes (right, ``[0, 1]``); the best validation
      epoch is marked.

    Raises:
      InputNotFoundError: The file does not exist.
      ConfigError: The file or records hold no ``loss`` per epoch.
    """
    records = _load_records(metrics)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    ax.plot(epochs, [r["loss"] for r in records], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax_f1 = ax.twinx()
    ax_f1.set_ylim(0, 1)
    ax_f1.set_ylabel("F1 (change class)")
    handles = ax.get_lines()[:]
    for key, style, colour, label in (
        ("train_f1", "^:", "tab:green", "train F1"),
        ("val_f1", "s--", "tab:orange", "validation F1"),
    ):
        points = [
            (e, r[key]) for e, r in zip(epochs, records, strict=True) if r.get(key) is not None
        ]
        if points:
            (line,) = ax_f1.plot(*zip(*points, strict=True), style, color=colour, label=label)
            handles.append(line)
            if key == "val_f1":
                best_epoch, best_f1 = max(points, key=lambda p: p[1])
                ax_f1.annotate(
                    f"best {best_f1:.3f}", (best_epoch, best_f1), textcoords="offset points",
                    xytext=(0, 8), ha="center", color=colour,
                )
    ax.legend(handles=handles, loc="center right", fontsize="small")
    ax.set_title("training")
    return fig


def plot_pr_curve(
    precision: Any,
    recall: Any,
    thresholds: Any,
    best: float | None = None,
) -> Figure:
    """Precision–recall curve and precision/recall/F1 against the threshold.

    Args:
      precision: ``(n,)`` precision at each threshold (e.g. ``metrics.pr_curve(...).precision``).
      recall: ``(n,)`` recall, same length.
      thresholds: ``(n,)`` ascending thresholds (score units; rule ``score > threshold``).
      best: Threshold to mark; default the one maximising F1.

    Returns:
      Figure with two axes: precision vs recall (with F1 iso-lines) and P/R/F1 vs threshold.
    """
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if not (p.shape == r.shape == t.shape) or p.ndim != 1 or p.size == 0:
        raise ConfigError(
            f"precision, recall and thresholds must be 1-D of one length; got {p.shape}, "
            f"{r.shape}, {t.shape}."
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    k = int(np.argmax(f1)) if best is None else int(np.argmin(np.abs(t - best)))
    fig = _figure(10, 4)
    ax_pr, ax_t = fig.subplots(1, 2)
    grid = np.linspace(0.01, 1, 100)
    for level in (0.2, 0.4, 0.6, 0.8):
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = level * grid / (2 * grid - level)
        keep = (prec > 0) & (prec <= 1)
        ax_pr.plot(grid[keep], prec[keep], color="0.8", linewidth=0.8)
        ax_pr.annotate(f"F1={level}", (grid[keep][-1], prec[keep][-1]), fontsize="x-small",
                       color="0.5")
    ax_pr.plot(r, p, color="tab:blue")
    ax_pr.plot(r[k], p[k], "o", color="tab:red",
               label=f"threshold {t[k]:.3g}: P {p[k]:.2f}, R {r[k]:.2f}, F1 {f1[k]:.2f}")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
              title="precision–recall")
    ax_pr.legend(loc="lower left", fontsize="small")
    ax_t.plot(t, p, label="precision")
    ax_t.plot(t, r, label="recall")
    ax_t.plot(t, f1, label="F1", color="black")
    ax_t.axvline(t[k], color="tab:red", linestyle="--", linewidth=1)
    ax_t.set(ylim=(0, 1.02), xlabel="threshold (score > threshold = change)", title="by threshold")
    ax_t.legend(fontsize="small")
    ax_t.grid(alpha=0.3)
    return fig


def write_loss_curve(metrics: str | Path | Sequence[Mapping[str, Any]], path: str | Path,
                     dpi: int = 80) -> Path:
    """:func:`plot_loss_curve` written as a PNG, atomically (``fit`` draws one every epoch).

    Raises:
      ImportError: matplotlib is not installed.
    """
    fig = plot_loss_curve(metrics)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
