"""Detectors: what turns a pair of scenes into a change score and a decision.

``cva`` (change vector analysis, no training), ``learned`` (``LearnedDetector``: the learned
Siamese detector, a ``changedet.models.ChangeModel`` record with its compiled predictors, and
``load_model``), ``modelfile`` (the file format and the packaged-model registry),
``prepare`` (binding a model to an input's bands and statistics) and ``choice`` (which detector
``method="auto"`` picks for an input). The protocol every detector follows is
``changedet.types.Detector`` / ``ScoringDetector``.
"""

from changedet.types import Detector, ScoringDetector

__all__ = ["Detector", "ScoringDetector"]
