"""``network.precision``: bf16 runs the backbone's forward in bfloat16 and keeps everything else in
float32; the meta gradient stays close to the exact one; checkpoints and resume work in both."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine import build as engine_build
from pipeline.engine.build import EMULATED_BF16_ENV, check_precision
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.loop import RunSpec, fit
from pipeline.layout import LAST
from pipeline.methods.losses import iada_loss
import torch.autograd.forward_ad as fwAD

from pipeline.methods.forward_primals import ForwardPrimals
from pipeline.methods.meta_gradient import MetaInputs, PseudoUpdate, TrainForward, meta_gradient, stateless_forward
from pipeline.methods.perturbation import PerturbationNet
from pipeline.networks import build_network
from pipeline.params.experiment import NetworkConfig, config_hash
from pipeline.params.schema import ParamError, build
from tests.tiny import tiny_data, tiny_experiment


def conv_output_dtypes(net: nn.Module, x: torch.Tensor) -> tuple[set[torch.dtype], torch.Tensor, torch.Tensor]:
    """The dtypes of every convolution's output during one forward, and the forward's h and z."""
    seen: set[torch.dtype] = set()
    handles = [m.register_forward_hook(lambda m, a, out: seen.add(out.dtype))
               for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        h = net.features(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen, h, net.classifier(h)


@pytest.mark.parametrize("arch", ["resnet8", "cnn"])
def test_bf16_runs_the_backbone_in_bfloat16_and_the_rest_in_float32(arch):
    size = 28 if arch == "cnn" else 16
    x = torch.randn(4, 3, size, size)
    fp32, bf16 = build_network(arch, 5), build_network(arch, 5, precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    dtypes, h, z = conv_output_dtypes(fp32, x)
    assert dtypes == {torch.float32} and h.dtype == z.dtype == torch.float32
    dtypes, h16, z16 = conv_output_dtypes(bf16, x)
    assert dtypes == {torch.bfloat16}
    assert h16.dtype == z16.dtype == torch.float32  # the classifier, losses and Ω see float32
    # the same function, rounded: bf16 keeps 8 significant bits (relative rounding 2^-8 a step)
    assert not torch.equal(h16, h)
    torch.testing.assert_close(h16, h, rtol=0.1, atol=0.1)
    # weights and their gradients stay float32 (the master copy the optimizer updates)
    F.cross_entropy(bf16(x), torch.arange(4) % 5).backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in bf16.parameters())


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        build_network("resnet8", 3, precision="fp16")
    with pytest.raises(ParamError, match="network.precision"):
        build(NetworkConfig, {"precision": "fp16"}, "experiments.x.network")


def test_bf16_without_native_support_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    """On a device without native bf16 (an AVX2 CPU: 14x slower than fp32 for ResNet-32,
    docs/precision.md) a bf16 run stops with one line saying what to do, before its folder or
    lock exists; fp32 is never refused, nor bf16 on a device that has it or with the override."""
    monkeypatch.delenv(EMULATED_BF16_ENV, raising=False)
    monkeypatch.setattr(engine_build, "native_bf16", lambda device: False)
    bf16 = tiny_experiment(network={"arch": "resnet8", "channels_last": False, "precision": "bf16"})
    with pytest.raises(ParamError, match=f"network.precision = bf16.*no native bfloat16.*network.precision=fp32.*"
                                         f"{EMULATED_BF16_ENV}=1"):
        fit(RunSpec(bf16, tiny_data(), "ce", 0, tmp_path / "run", first_epoch=0, last_epoch=1, device="cpu"))
    assert not (tmp_path / "run").exists()
    check_precision(tiny_experiment(), torch.device("cpu"))  # fp32
    monkeypatch.setenv(EMULATED_BF16_ENV, "1")
    check_precision(bf16, torch.device("cpu"))
    monkeypatch.delenv(EMULATED_BF16_ENV)
    monkeypatch.setattr(engine_build, "native_bf16", lambda device: True)
    check_precision(bf16, torch.device("cpu"))


def test_native_bf16_follows_the_cpu_flags():
    """oneDNN's bf16 path needs AVX-512; a CPU with avx512_bf16 or amx_bf16 has it, an AVX2 one
    (no avx512f) has not (torch's own reading of CPUID)."""
    caps = torch.cpu.get_capabilities()
    native = engine_build.native_bf16(torch.device("cpu"))
    if caps.get("avx512_bf16") or caps.get("amx_bf16"):
        assert native
    if not caps.get("avx512_f"):
        assert not native


def test_the_fp32_default_keeps_the_configuration_hash_of_recorded_runs():
    """Runs recorded before the switch existed (all fp32) keep their hashes; bf16 changes it."""
    before = {"arch": "resnet8", "channels_last": True}  # what a NetworkConfig hashed to before
    assert config_hash(build(NetworkConfig, before, "n")) == config_hash(before)
    assert config_hash(build(NetworkConfig, {**before, "precision": "bf16"}, "n")) != config_hash(before)


def meta_problem(precision: str, dtype: torch.dtype, batch: int = 32):
    """A ResNet-8 meta step's inputs, drawn in float64 and cast to ``dtype`` (the same problem
    whatever the dtype); returns the Ω gradient of :func:`meta_gradient` as one float64 vector."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = build_network("resnet8", 3, precision=precision).double().train()
    omega = PerturbationNet(4).double().train()
    x = torch.randn(batch, 3, 16, 16, generator=g, dtype=torch.float64)
    meta_x = torch.randn(batch, 3, 16, 16, generator=g, dtype=torch.float64)
    root = torch.randn(3, 64, 64, generator=g, dtype=torch.float64)
    cov, c = root @ root.transpose(1, 2) / 64, torch.randn(batch, 4, generator=g, dtype=torch.float64)
    y, meta_y = torch.arange(batch) % 3, (torch.arange(batch) + 1) % 3
    net, omega = net.to(dtype).to(memory_format=torch.channels_last), omega.to(dtype)
    x, meta_x, cov, c = (t.to(dtype) for t in (x, meta_x, cov, c))
    x = x.contiguous(memory_format=torch.channels_last)

    def train_loss(logits, weight, eps):
        return iada_loss(logits, None, y, weight, cov, epsilon=eps, alpha=0.8, beta=1.0, direction="pairwise")

    primals = ForwardPrimals(net)  # as in training: the real forward's primals are reused
    with primals.record():
        h = net.features(x)
    _, grads = meta_gradient(net, omega, train_loss, batch=TrainForward(x, h, net.classifier(h), c, primals),
                             meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(0.5))
    return torch.cat([t.flatten() for t in grads]).double()


def test_the_bf16_meta_gradient_is_within_rounding_of_the_exact_one():
    """The Ω gradient with the backbone in bf16 against the float64 one (which the
    finite-difference tests of tests/methods/test_meta_gradient.py pin down), same problem.

    Tolerance: bf16 rounds each stored activation, weight copy and tangent to 8 significant bits
    (unit roundoff u = 2^-8 ≈ 0.0039), with float32 accumulation inside each convolution. The
    gradient is built from a forward, a backward and a forward-mode pass through ResNet-8's 7
    convolutions, so relative errors of a few u per pass add up to about 10u at most; the
    bound 0.05 ≈ 13u, and a cosine above 0.998, leave room for that (measured: 0.8 %) while any
    error of the method (a tangent term dropped, a wrong cast) is of order 1. float32 must be
    far closer (1e-4)."""
    exact = meta_problem("fp32", torch.float64)
    fp32 = meta_problem("fp32", torch.float32)
    bf16 = meta_problem("bf16", torch.float32)
    assert exact.norm() > 0
    assert (fp32 - exact).norm() / exact.norm() < 1e-4
    error = (bf16 - exact).norm() / exact.norm()
    assert error > (fp32 - exact).norm() / exact.norm()  # bf16 is really in use
    assert error < 0.05
    assert F.cosine_similarity(bf16, exact, dim=0) > 0.998


@pytest.mark.parametrize("method", ["ce", "meta_iada"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_interrupted_run_resumes_to_the_same_weights_in_either_precision(tmp_path, monkeypatch, precision, method):
    monkeypatch.setenv(EMULATED_BF16_ENV, "1")  # tiny networks: emulated bf16 costs nothing here
    exp = tiny_experiment(network={"arch": "resnet8", "channels_last": False, "precision": precision})
    data = tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=2, device="cpu"))
    init = tmp_path / "pre" / LAST

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        if epoch == 2:
            raise Stop

    def spec(folder):
        return RunSpec(exp, data, method, 0, tmp_path / folder, first_epoch=2, last_epoch=4, init=init, device="cpu")

    fit(spec("full"))
    with pytest.raises(Stop):
        fit(spec("cut"), on_epoch=stop)
    fit(spec("cut"))
    full, cut = load_checkpoint(tmp_path / "full" / LAST), load_checkpoint(tmp_path / "cut" / LAST)
    assert all(v.dtype == torch.float32 for v in full["model"].values() if v.is_floating_point())
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])
    # the fingerprint holds the precision: the other precision's run would not resume from this one
    other = tiny_experiment(network={"arch": "resnet8", "channels_last": False,
                                     "precision": "fp32" if precision == "bf16" else "bf16"})
    fit(RunSpec(other, data, method, 0, tmp_path / "cut", first_epoch=2, last_epoch=4, init=init, device="cpu"))
    assert load_checkpoint(tmp_path / "cut" / LAST)["fingerprint"] != full["fingerprint"]


def jvp_of_logits(precision: str, dtype: torch.dtype, reuse: bool = True) -> torch.Tensor:
    """ż = (∂z/∂θ)·u of a ResNet-8 along a fixed direction u, as the meta step computes it (the
    forward-mode pass over the real forward's recorded primals; ``reuse=False``: torch's own
    forward-mode AD of the whole forward), as a float64 vector; the problem is drawn in float64
    and cast to ``dtype``."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = build_network("resnet8", 3, precision=precision).double().train()
    x = torch.randn(16, 3, 16, 16, generator=g, dtype=torch.float64)
    u = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in net.named_parameters()}
    net = net.to(dtype).to(memory_format=torch.channels_last)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    primals = ForwardPrimals(net)
    with primals.record():
        net.features(x)
    with fwAD.dual_level():
        dual = {k: fwAD.make_dual(p.detach(), u[k].to(dtype)) for k, p in net.named_parameters()}
        with primals.reuse() if reuse else contextlib.nullcontext():
            _, z = stateless_forward(net, dual, x)
        return fwAD.unpack_dual(z).tangent.double().flatten()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_the_bf16_forward_mode_pass_is_torchs_own_within_rounding():
    """The meta step's forward-mode pass through the backbone in bf16 (recorded bf16 primals,
    tangents under autocast, BatchNorm from its recorded statistics) against torch's own
    forward-mode AD of the same bf16 forward: they differ only in rounding (measured 0.8 %), so
    3 % catches a wrong term (a tangent off by 10 % fails). Against float64 the bf16 tangent is off
    by about 10 % whichever way it is computed (measured 9.4 % and 9.6 %): BatchNorm's tangent
    γ·r·(ẋ − mean(ẋ) − x̂·mean(ẋ·x̂)) subtracts nearly equal terms of a bf16 ẋ, which amplifies its
    2^-8 rounding; hence the bound 0.2 there. It enters the Ω gradient only through the
    backbone's term, whose error the test above bounds (0.8 % measured)."""
    exact = jvp_of_logits("fp32", torch.float64)
    torch_bf16 = jvp_of_logits("bf16", torch.float32, reuse=False)
    ours = jvp_of_logits("bf16", torch.float32)
    assert exact.norm() > 0
    assert relative_error(jvp_of_logits("fp32", torch.float32), exact) < 1e-5
    assert 0 < relative_error(ours, torch_bf16) < 0.03
    assert relative_error(ours, exact) < 0.2
