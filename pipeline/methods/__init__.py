"""Every training method and the paper's parts they are built from.

Methods: :mod:`~pipeline.methods.base` (the interface, ``ce``, ``la``), :mod:`~pipeline.methods.iada`
(``isda``, ``iada``, ``meta_iada``). The paper's parts: :mod:`~pipeline.methods.losses` (the IADA
loss, method.md §2-3), :mod:`~pipeline.methods.covariance` (Σ), :mod:`~pipeline.methods.characteristics`
(Ω's inputs, §4), :mod:`~pipeline.methods.perturbation` (Ω), :mod:`~pipeline.methods.meta_gradient`
(the meta step, §5). A new method is one :class:`~pipeline.methods.base.Method` subclass
registered here, with its ``Config`` and a block in params.yaml.
"""

from pipeline.methods.base import REGISTRY, Batch, Method, StepContext, TrainInfo, method_class, register
from pipeline.methods import iada  # noqa: F401  (registers isda, iada, meta_iada)
from pipeline.methods import longtail  # noqa: F401  (focal, cb_ce, cb_focal, ldam_drw, balanced_softmax)
from pipeline.methods import robust  # noqa: F401  (gce, groupdro, jtt)
from pipeline.methods import mwn  # noqa: F401  (mwn)
from pipeline.methods import metasaug  # noqa: F401  (metasaug)

__all__ = ["REGISTRY", "Batch", "Method", "StepContext", "TrainInfo", "method_class", "register"]
