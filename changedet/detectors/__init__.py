"""Detectors: what turns a pair of scenes into a change score and a decision.

``cva`` (change vector analysis, no training), ``modelfile`` (the learned Siamese detector,
``ChangeModel``: its file format, the packaged-model registry and its compiled predictors),
``prepare`` (binding a model to an input's bands and statistics) and ``choice`` (which detector
``method="auto"`` picks for an input). The protocol every detector follows is
``changedet.types.Detector`` / ``ScoringDetector``.
"""

from changedet.types import Detector, ScoringDetector

__all__ = ["Detector", "ScoringDetector"]
