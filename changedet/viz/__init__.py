"""Pictures of scenes, change maps and training runs (matplotlib, imported lazily).

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no GUI
backend or display is ever needed (PNG files are rendered by the Agg canvas, headless), figures
do not pile up in pyplot's registry, and Jupyter shows a returned figure once, as a PNG. Call
``fig.savefig(path)`` to keep one. :func:`write_quicklook` and :func:`write_loss_curve` do I/O:
the first reads a pair and a written mask through :mod:`changedet.io`, at reduced resolution for
large scenes; both write their PNG atomically.

``figures``: true colour, overlays, pair grids, distance histograms; ``quicklook``: the run
quicklook and the changed area; ``plots``: training curves. The only package that imports
matplotlib; it must not import jax.
"""

from changedet.viz.figures import (
    CHANGE_COLOUR,
    NODATA_COLOUR,
    distance_histograms,
    overlay,
    pair_grid,
    stretch_limits,
    true_colour,
    true_colour_pair,
)
from changedet.viz.plots import plot_loss_curve, plot_pr_curve, write_loss_curve
from changedet.viz.quicklook import changed_area, quicklook, write_quicklook

__all__ = [
    "CHANGE_COLOUR",
    "NODATA_COLOUR",
    "changed_area",
    "distance_histograms",
    "overlay",
    "pair_grid",
    "plot_loss_curve",
    "plot_pr_curve",
    "quicklook",
    "stretch_limits",
    "true_colour",
    "true_colour_pair",
    "write_loss_curve",
    "write_quicklook",
]
