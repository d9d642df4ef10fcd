"""The step benchmark runs and reports what its docs promise (timings are not asserted: speed goals
are checked by ``python -m pipeline.bench``, never by tests)."""

from __future__ import annotations

import math

from pipeline.bench.steps import time_steps


def test_time_steps_reports_every_variant_and_the_ratios():
    result = time_steps(arch="resnet8", batch=10, repeats=1, warmup=0, memory=False)
    for variant in ("ce", "meta_head", "meta_full", "meta_forward"):
        assert result[f"{variant}_step_median_s"] > 0, variant
    for ratio in ("meta_head_over_ce", "meta_full_over_ce", "meta_forward_over_ce"):
        assert math.isfinite(result[ratio]) and result[ratio] > 0, ratio
        assert result[ratio] == result[ratio.replace("_over_ce", "_step_median_s")] / result["ce_step_median_s"]
