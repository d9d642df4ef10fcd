"""Training methods behind one interface (see :mod:`pipeline.methods.base`)."""

from pipeline.methods.base import REGISTRY, Batch, Method, StepContext, TrainInfo, method_class, register
from pipeline.methods import iada  # noqa: F401  (registers isda, iada, meta_iada)

__all__ = ["REGISTRY", "Batch", "Method", "StepContext", "TrainInfo", "method_class", "register"]
