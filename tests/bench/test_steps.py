"""The step benchmark runs and reports what its docs promise (timings are not asserted: speed goals
are checked by ``python -m pipeline.bench``, never by tests)."""

from __future__ import annotations

import math

from pipeline.bench.steps import time_steps


def test_time_steps_reports_every_variant_and_the_ratios():
    result = time_steps(arch="resnet8", batch=10, repeats=1, warmup=0, memory=False)
    for variant in ("ce", "meta_head", "meta_full", "meta_full_shared", "meta_forward", "mwn_full", "metasaug_full",
                    "peer_style_full"):
        assert result[f"{variant}_step_median_s"] > 0, variant
    for ratio in ("meta_head_over_ce", "meta_full_over_ce", "meta_forward_over_ce", "mwn_full_over_ce",
                  "metasaug_full_over_ce", "peer_style_full_over_ce", "meta_full_shared_over_ce"):
        assert math.isfinite(result[ratio]) and result[ratio] > 0, ratio
        assert result[ratio] == result[ratio.replace("_over_ce", "_step_median_s")] / result["ce_step_median_s"]
    assert result["meta_full_over_peer_style"] == (result["meta_full_step_median_s"]
                                                   / result["peer_style_full_step_median_s"])


def test_the_peer_style_step_computes_the_same_step_as_the_projects():
    """The benchmark compares like with like: from the same state, Meta-IADA's full step written
    the peers' way (create_graph + double backward) and the project's (forward-mode second-order
    term) leave Ω and θ at the same values."""
    import torch

    from pipeline.bench.steps import _setup, peer_style_step

    ours, batch, ctx = _setup("meta_full", "resnet8", 10, 10, torch.device("cpu"), False)
    peers, batch2, ctx2 = _setup("peer_style_full", "resnet8", 10, 10, torch.device("cpu"), False)
    assert torch.equal(batch.x, batch2.x)
    start = [p.detach().clone() for p in ours.perturbation_net.parameters()]
    ours.update(batch, ctx)
    peer_style_step(peers, batch2, ctx2)
    assert any(not torch.equal(a, s) for a, s in zip(ours.perturbation_net.parameters(), start))  # Ω moved
    for a, b in zip(ours.perturbation_net.parameters(), peers.perturbation_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours.network.parameters(), peers.network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_time_steps_reports_the_bf16_keys_beside_the_fp32_ones(monkeypatch):
    """With both precisions: every variant under bf16 with its own ratios to the bf16 CE step, and
    the speed-ups of bf16 over fp32 (fp32 median over bf16 median, from the same rounds); the bf16
    steps run on networks built in bf16 (a bench that timed fp32 twice would report a speed-up of 1)."""
    import pipeline.bench.steps as steps

    built: list[str] = []
    real_build = steps.build_network

    def recording_build(*args, precision="fp32", **kwargs):
        built.append(precision)
        return real_build(*args, precision=precision, **kwargs)

    monkeypatch.setattr(steps, "build_network", recording_build)
    result = time_steps(arch="resnet8", batch=10, repeats=1, warmup=0, memory=False, precisions=("fp32", "bf16"))
    assert built.count("bf16") == built.count("fp32") >= 5, built  # every variant built once per precision
    for variant in ("ce", "meta_head", "meta_full", "mwn_full", "metasaug_full"):
        assert result[f"bf16_{variant}_step_median_s"] > 0, variant
        assert result[f"bf16_{variant}_speedup"] == (result[f"{variant}_step_median_s"]
                                                    / result[f"bf16_{variant}_step_median_s"])
    assert result["bf16_meta_full_over_ce"] == result["bf16_meta_full_step_median_s"] / result["bf16_ce_step_median_s"]
    assert result["bf16_ce_speedup"] > 0 and "meta_full_over_ce" in result
