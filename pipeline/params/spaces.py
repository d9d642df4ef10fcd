"""Each method's hyperparameter search space after its paper or its authors' code, with the
source of every range (DomainBed's ``hparams_registry``): what a tuning budget
(``tune.budgets``, :mod:`pipeline.params.budget`) searches, with the same number of trials for
every method. The defaults these ranges perturb are the method Configs and the experiments'
``methods:`` blocks; keys are dotted paths into an experiment (``methods.<method>.<field>``).

``verified`` is True only where the range itself (not just the method's default) was read in
the source named; the others are this project's reading of the paper, to be checked against its
text before a result is published. No paper of the lt_ref methods was found to tune the learning
rate, so none of these spaces holds ``optim.lr``. A method with no space (``ce``,
``balanced_softmax``) has no hyperparameter of its own: its default row is its tuned row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.params.search import ParamSpace


@dataclass(frozen=True)
class PaperRange:
    """The range of one key, where it comes from, and whether it was read there."""

    space: ParamSpace
    source: str
    verified: bool


def choices(values: list[Any], source: str, *, verified: bool) -> PaperRange:
    return PaperRange(ParamSpace("categorical", choices=list(values)), source, verified)


def log_range(low: float, high: float, source: str, *, verified: bool) -> PaperRange:
    return PaperRange(ParamSpace("float", low=low, high=high, log=True), source, verified)


def linear_range(low: float, high: float, source: str, *, verified: bool) -> PaperRange:
    return PaperRange(ParamSpace("float", low=low, high=high), source, verified)


ALPHA_GRID = [0.1, 0.25, 0.5, 0.75, 1.0]  # docs/method.md §2: "α ∈ {0.1, 0.25, 0.5, 0.75, 1} is the paper's grid"
ISDA_LAMBDA = [0.25, 0.5, 0.75, 1.0]
CB_BETA = [0.9, 0.99, 0.999, 0.9999]
FOCAL_GAMMA = [0.5, 1.0, 2.0]
CB_SWITCH = ("class_balanced is this project's switch, not a paper's: searched for isda, iada and meta_iada alike "
             "(issue 30 items 6-7: Meta-IADA's true was chosen on the reported seeds)")

PAPER_SPACES: dict[str, dict[str, PaperRange]] = {
    "la": {
        "methods.la.tau": linear_range(0.5, 2.5, "Menon et al. 2021 (ICLR), the tau sweep of their CIFAR-LT "
                                       "figures; the code's default tau = 1.0 (google-research logit_adjustment, "
                                       "class FLAGS: tau = 1.0)", verified=False),
    },
    "ldam_drw": {
        "methods.ldam_drw.max_m": choices([0.3, 0.5, 0.7], "Cao et al. 2019 tune C so that the largest margin is "
                                          "a set value; kaidic/LDAM-DRW cifar_train.py: LDAMLoss(max_m=0.5)",
                                          verified=False),
        "methods.ldam_drw.drw_beta": choices([0.99, 0.999, 0.9999], "Cao et al. 2019, DRW's effective-number "
                                             "beta; cifar_train.py: betas = [0, 0.9999]", verified=False),
    },
    "focal": {
        "methods.focal.gamma": choices(FOCAL_GAMMA, "Cui et al. 2019 §5 (gamma searched for the focal rows of "
                                       "CIFAR-LT); Lin et al. 2017 Table 1a spans 0-5", verified=False),
    },
    "cb_ce": {
        "methods.cb_ce.beta": choices(CB_BETA, "Cui et al. 2019 §5 (beta searched per data set); "
                                      "class-balanced-loss cifar_im_trainval_cb.sh: BETA=0.9999", verified=False),
    },
    "cb_focal": {
        "methods.cb_focal.beta": choices(CB_BETA, "Cui et al. 2019 §5, as cb_ce", verified=False),
        "methods.cb_focal.gamma": choices(FOCAL_GAMMA, "Cui et al. 2019 §5, as focal", verified=False),
    },
    "isda": {
        "methods.isda.alpha": choices(ISDA_LAMBDA, "Wang et al. 2019 (ISDA), lambda_0; ISDA-for-Deep-Networks "
                                      "'Image classification on CIFAR/README.md', --lambda_0: 'we recommend 0.5 or "
                                      "0.25' (read), the set itself not", verified=False),
        "methods.isda.class_balanced": choices([False, True], CB_SWITCH, verified=True),
    },
    "iada": {
        "methods.iada.alpha": choices(ALPHA_GRID, "Meta-IADA's alpha grid (docs/method.md; IADA is its fixed-epsilon "
                                      "ablation)", verified=True),
        "methods.iada.class_balanced": choices([False, True], CB_SWITCH, verified=True),
    },
    "meta_iada": {
        "methods.meta_iada.alpha": choices(ALPHA_GRID, "Zhou et al. 2024, the paper's grid {0.1, 0.25, 0.5, 0.75, 1} "
                                           "(docs/method.md §2; beta fixed at 1 there)", verified=True),
        "methods.meta_iada.class_balanced": choices([False, True], CB_SWITCH, verified=True),
    },
    "metasaug": {
        "methods.metasaug.alpha": choices(ALPHA_GRID, "Li et al. 2021 (MetaSAug) lambda, ISDA's ramp: BIT-DA/MetaSAug "
                                          "--lam default 0.25, scripts/MetaSAug_LDAM_train.sh:1 --lam 0.75 (both "
                                          "read); the grid is ISDA's/Meta-IADA's", verified=False),
    },
    "mwn": {
        "methods.mwn.lr": log_range(1e-5, 1e-3, "Shu et al. 2019 (MW-Net), V's lr: the class-imbalance code's 1e-5 "
                                    "and the noisy-label code's 1e-3 (pipeline/methods/mwn.py, MWNConfig) as the "
                                    "ends", verified=False),
    },
    "gce": {
        "methods.gce.q": choices([0.4, 0.7, 0.8], "Zhang & Sabuncu 2018, q = 0.7 on CIFAR", verified=False),
    },
    "groupdro": {
        "methods.groupdro.step_size": log_range(1e-3, 1e-1, "Sagawa et al. 2020, eta_q (run_expt.py "
                                                "--robust_step_size default 0.01)", verified=False),
        "methods.groupdro.adjustment": choices([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "Sagawa et al. 2020, C of "
                                               "C/sqrt(n_g) searched over 0-5", verified=False),
    },
    "jtt": {
        "methods.jtt.lambda_up": choices([20.0, 50.0, 100.0], "Liu et al. 2021 (JTT), lambda_up searched in "
                                         "{20, 50, 100} (pipeline/methods/robust.py, JTTConfig)", verified=False),
    },
}


def paper_space(method: str) -> dict[str, ParamSpace]:
    """The search space of ``method`` (dotted key -> :class:`ParamSpace`); empty if it has none."""
    return {key: r.space for key, r in PAPER_SPACES.get(method, {}).items()}
