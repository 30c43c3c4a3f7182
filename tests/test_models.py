"""Score networks: the tutorial U-Net's structure, seeding, std scaling, sample independence,
and differentiability by forward mode (which the operators use)."""

from __future__ import annotations

import math

import pytest
import torch

from scorefpe.models import MLPConfig, MLPScoreNet, ScoreNet, ScoreNetConfig
from scorefpe.sde import VESDE, VPSDE


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unet_feature_shapes_follow_the_tutorial():
    # The tutorial's encoder: 28 -> 26 -> 12 -> 5 -> 2 with 32/64/128/256 channels, decoder back.
    net = ScoreNet(VPSDE(), ScoreNetConfig(width=1.0), seed=0)
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "tconv4", "tconv3", "tconv2", "tconv1"):
        getattr(net.net, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:]))
        )
    x = torch.rand(2, 1, 28, 28)
    out = net(x, torch.tensor([0.3, 0.9]))
    assert out.shape == x.shape
    assert seen == {
        "conv1": (32, 26, 26), "conv2": (64, 12, 12), "conv3": (128, 5, 5), "conv4": (256, 2, 2),
        "tconv4": (128, 5, 5), "tconv3": (64, 12, 12), "tconv2": (32, 26, 26), "tconv1": (1, 28, 28),
    }
    assert net.net.gnorm1.num_groups == 4 and net.net.gnorm2.num_groups == 32
    assert not any("W" in n for n, _ in net.named_parameters()), "Fourier frequencies are fixed"


@pytest.mark.parametrize("width", [1.0, 0.25, 0.125])
def test_time_conditioning_reaches_the_output_at_every_width(width):
    # Each Dense(emb) shift must survive the GroupNorm after it (more than one channel per
    # group), except the tutorial's dense7 before tgnorm2 (32 groups of 1 channel): there the
    # shift is removed exactly and only round-off reaches the weights.
    net = ScoreNet(VPSDE(), ScoreNetConfig(width=width), seed=0).double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    layers = [getattr(net.net, f"dense{i}").weight for i in range(1, 8)]
    grads = torch.autograd.grad(net(x, t).pow(2).sum(), layers)
    norms = [float(g.norm()) for g in grads]
    scale = max(norms)
    assert all(n > 1e-4 * scale for n in norms[:6]), norms
    assert norms[6] < 1e-10 * scale, norms


@pytest.mark.parametrize("width", [0.25, 0.125])
def test_unet_narrow_widths_run(width):
    net = ScoreNet(VPSDE(), ScoreNetConfig(width=width), seed=1)
    c0 = net.config.channels[0]
    assert c0 == round(32 * width)
    assert net(torch.rand(3, 1, 28, 28), torch.rand(3) * 0.9 + 0.1).shape == (3, 1, 28, 28)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a = ScoreNet(VPSDE(), ScoreNetConfig(width=0.25), seed=7)
    b = ScoreNet(VPSDE(), ScoreNetConfig(width=0.25), seed=7)
    c = ScoreNet(VPSDE(), ScoreNetConfig(width=0.25), seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _params_equal(a, b)
    assert not _params_equal(a, c)
    m1, m2 = MLPScoreNet(MLPConfig(dim=2), seed=3), MLPScoreNet(MLPConfig(dim=2), seed=3)
    assert _params_equal(m1, m2)
    assert not _params_equal(m1, MLPScoreNet(MLPConfig(dim=2), seed=4))


def test_init_matches_pytorch_default_scale():
    # kaiming-uniform(a=sqrt 5) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance 1/(3 fan_in).
    net = ScoreNet(VPSDE(), seed=0)
    w = net.net.conv3.weight.detach()  # fan_in = 64 * 9
    fan_in = w.shape[1] * 9
    bound = 1 / math.sqrt(fan_in)
    assert float(w.abs().max()) <= bound
    var = float(w.var())
    se = math.sqrt(0.8 / w.numel()) * (1 / (3 * fan_in))  # Var(s^2) = (mu4 - sigma^4)/n, mu4 = 9/5 sigma^4
    assert abs(var - 1 / (3 * fan_in)) < 4 * se
    fw = net.net.embed[0].W  # N(0, 30^2)
    assert abs(float(fw.std()) - 30.0) < 4 * 30.0 / math.sqrt(2 * fw.numel())


def test_output_is_divided_by_the_marginal_std():
    # Same seed, different SDE: the inner network is identical, so sigma(t) s(x, t) must agree.
    x, t = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.tensor([1e-5, 1e-3, 0.2, 1.0])
    t = t.double()
    vp, ve = VPSDE(), VESDE()
    a = ScoreNet(vp, ScoreNetConfig(width=0.125), seed=5).double()
    b = ScoreNet(ve, ScoreNetConfig(width=0.125), seed=5).double()
    ha = a(x, t) * vp.marginal_std(t)[:, None, None, None]
    hb = b(x, t) * ve.marginal_std(t)[:, None, None, None]
    torch.testing.assert_close(ha, hb, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a(x, t), b(x, t))


@pytest.mark.parametrize("make", ["unet", "mlp"])
def test_samples_are_independent(make):
    # No batch statistics: each row's output depends on that row only (operators rely on it).
    if make == "unet":
        net, x = ScoreNet(VPSDE(), ScoreNetConfig(width=0.125)).double(), torch.rand(5, 1, 28, 28)
    else:
        net, x = MLPScoreNet(MLPConfig(dim=3), VPSDE()).double(), torch.randn(5, 3)
    x, t = x.double(), torch.linspace(0.01, 1.0, 5, dtype=torch.float64)
    full = net(x, t)
    rows = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(full, rows, rtol=1e-12, atol=1e-12)


def test_unet_forward_mode_derivative_matches_central_difference():
    # float64; central difference error h^2/6 |s'''| with h = 1e-5: far below the tolerance.
    net = ScoreNet(VPSDE(), ScoreNetConfig(width=0.125), seed=2).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 28, 28, generator=g, dtype=torch.float64)
    v = torch.randn(2, 1, 28, 28, generator=g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.7], dtype=torch.float64)
    _, jv = torch.func.jvp(lambda a: net(a, t), (x,), (v,))
    h = 1e-5
    fd = (net(x + h * v, t) - net(x - h * v, t)) / (2 * h)
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


def test_mlp_shapes_std_scaling_and_time_embedding():
    cfg = MLPConfig(dim=2, hidden=16, depth=2, embed_dim=8, max_freq=8.0)
    raw = MLPScoreNet(cfg, seed=0).double()
    scaled = MLPScoreNet(cfg, VPSDE(), seed=0).double()
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.linspace(1e-3, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(scaled(x, t) * VPSDE().marginal_std(t)[:, None], raw(x, t))
    freqs = raw.net.embed.freqs
    assert float(freqs[0]) == pytest.approx(1.0) and float(freqs[-1]) == pytest.approx(8.0)


def test_bad_inputs_raise():
    net = ScoreNet(VPSDE(), ScoreNetConfig(width=0.125))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        net(torch.rand(2, 1, 32, 32), torch.rand(2))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.rand(2, 1, 28, 28), torch.rand(3))
    with pytest.raises(ValueError, match="width"):
        ScoreNetConfig(width=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        MLPConfig(dim=2, hidden=0)
    mlp = MLPScoreNet(MLPConfig(dim=2))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        mlp(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(TypeError, match="seed"):
        MLPScoreNet(MLPConfig(dim=2), seed=1.5)  # type: ignore[arg-type]
