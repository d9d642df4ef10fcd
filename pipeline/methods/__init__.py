"""Training methods behind one interface (see :mod:`pipeline.methods.base`)."""

from pipeline.methods.base import REGISTRY, Batch, Method, StepContext, TrainInfo, register

__all__ = ["REGISTRY", "Batch", "Method", "StepContext", "TrainInfo", "register"]
