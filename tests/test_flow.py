"""Flow matching pieces: straight path, target velocity, loss, skewed time sampling, x_init, guidance."""

from __future__ import annotations

import math

import pytest
import torch

from napari_cellflux.core.flow import (
    flow_matching_loss,
    guidance_mix,
    guided,
    network_velocity,
    sample_t_skewed,
    target_velocity,
    x_init,
    x_t,
)
from napari_cellflux.core.unet import UNet, UNetConfig


def _pair(n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64)


def test_x_t_endpoints():
    x0, x1 = _pair()
    torch.testing.assert_close(x_t(x0, x1, torch.zeros(4, dtype=torch.float64)), x0, rtol=0, atol=0)
    torch.testing.assert_close(x_t(x0, x1, torch.ones(4, dtype=torch.float64)), x1, rtol=0, atol=0)


def test_x_t_uses_each_samples_own_time():
    x0, x1 = _pair()
    t = torch.tensor([0.0, 0.25, 0.5, 0.9], dtype=torch.float64)
    out = x_t(x0, x1, t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(out[i], (1 - ti) * x0[i] + ti * x1[i])


def test_target_velocity_is_the_time_derivative_of_the_path():
    x0, x1 = _pair()
    u = target_velocity(x0, x1)
    torch.testing.assert_close(u, x1 - x0, rtol=0, atol=0)
    for t in (0.1, 0.5, 0.8):
        h = 1e-6
        t_lo, t_hi = torch.full((4,), t - h, dtype=torch.float64), torch.full((4,), t + h, dtype=torch.float64)
        derivative = (x_t(x0, x1, t_hi) - x_t(x0, x1, t_lo)) / (2 * h)
        torch.testing.assert_close(derivative, u, rtol=1e-6, atol=1e-6)


def test_loss_is_zero_for_a_perfect_prediction_and_mse_otherwise():
    x0, x1 = _pair()
    perfect = target_velocity(x0, x1)
    assert flow_matching_loss(perfect, x0, x1).item() == 0.0
    assert flow_matching_loss(perfect + 0.5, x0, x1).item() == pytest.approx(0.25)
    off = torch.zeros_like(perfect)
    off[0] = 2.0  # one sample of four off by 2 everywhere: mean of squares = 4 / 4
    assert flow_matching_loss(perfect + off, x0, x1).item() == pytest.approx(1.0)
    assert flow_matching_loss(perfect, x0, x1).dim() == 0


def _skewed_cdf(t: float, mean: float = -1.2, std: float = 1.2) -> float:
    """P(T <= t) for T = 1 / (1 + exp(N(mean, std^2))): T <= t  <=>  log sigma >= log(1/t - 1)."""
    z = (math.log(1 / t - 1) - mean) / std
    return 1 - 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_skewed_t_range_median_and_distribution():
    t = sample_t_skewed(200_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (200_000,)
    assert t.min() >= 1e-4 and t.max() <= 1.0
    assert t.median().item() == pytest.approx(1 / (1 + math.exp(-1.2)), abs=0.005)
    for q in (0.2, 0.5, 0.7, 0.9, 0.97):
        assert (t <= q).float().mean().item() == pytest.approx(_skewed_cdf(q), abs=0.005)


def test_skewed_t_is_clipped_to_1e_4_and_1():
    low = sample_t_skewed(100, mean=20.0, std=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.all(low == 1e-4)
    high = sample_t_skewed(100, mean=-30.0, std=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.all(high == 1.0)


def test_skewed_t_is_reproducible_with_a_generator():
    a = sample_t_skewed(64, generator=torch.Generator().manual_seed(3))
    b = sample_t_skewed(64, generator=torch.Generator().manual_seed(3))
    c = sample_t_skewed(64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_x_init_adds_scaled_noise():
    control, noise = _pair()
    torch.testing.assert_close(x_init(control, noise, 0.5), control + 0.5 * noise, rtol=0, atol=0)
    torch.testing.assert_close(x_init(control, noise, 0.0), control, rtol=0, atol=0)


def test_guidance_zero_never_calls_the_unconditional_velocity():
    def unconditional(x, t):
        raise AssertionError("the unconditional velocity must not be evaluated with w = 0")

    def conditional(x, t):
        return 2 * x + t

    v = guided(conditional, unconditional, 0.0)
    x = torch.ones(2, 1, 2, 2)
    torch.testing.assert_close(v(x, torch.tensor(0.5)), conditional(x, torch.tensor(0.5)))


@pytest.mark.parametrize("w", [0.2, 1.5])
def test_guidance_formula(w):
    calls = {"c": 0, "u": 0}

    def conditional(x, t):
        calls["c"] += 1
        return 3 * x + t

    def unconditional(x, t):
        calls["u"] += 1
        return -x + 2 * t

    x, t = _pair(2)[0], torch.tensor(0.3, dtype=torch.float64)
    out = guided(conditional, unconditional, w)(x, t)
    torch.testing.assert_close(out, (1 + w) * (3 * x + t) - w * (-x + 2 * t))
    assert calls == {"c": 1, "u": 1}


# --- network_velocity: guidance as one batch of 2N -------------------------------------------------


class _RecordingNetwork:
    """net(x, t, cond, mask) = (1 + mask) x + t (mask 1 where absent), recording every call."""

    def __init__(self):
        self.calls = []
        self.source_noise = []

    def __call__(self, x, t, cond, mask=None, source_noise=None):
        self.calls.append((x.shape[0], None if t is None else t.clone(), cond, mask))
        self.source_noise.append(source_noise)
        m = torch.ones(len(x), dtype=x.dtype) if mask is None else mask.to(x.dtype)
        if cond is None:
            m = torch.zeros(len(x), dtype=x.dtype)
        return (1 + m)[:, None, None, None] * x + t[:, None, None, None]


def test_guidance_mix_formula():
    a, b = _pair(2)
    torch.testing.assert_close(guidance_mix(a, b, 0.3), 1.3 * a - 0.3 * b)


def test_network_velocity_without_guidance_is_one_conditional_call():
    net = _RecordingNetwork()
    x = _pair(3)[0]
    cond = torch.randn(3, 5)
    out = network_velocity(net, cond, 0.0)(x, torch.tensor(0.25, dtype=torch.float64))
    assert len(net.calls) == 1
    n, t, c, mask = net.calls[0]
    assert n == 3 and torch.equal(t, torch.full((3,), 0.25, dtype=torch.float64)) and c is cond and mask is None
    torch.testing.assert_close(out, 2 * x + 0.25)


def test_network_velocity_without_condition_is_unconditional():
    net = _RecordingNetwork()
    x = _pair(2)[0]
    out = network_velocity(net, None, 0.5)(x, torch.tensor(0.5, dtype=torch.float64))
    assert len(net.calls) == 1 and net.calls[0][2] is None
    torch.testing.assert_close(out, x + 0.5)


def test_network_velocity_with_guidance_is_one_batch_of_2n():
    net = _RecordingNetwork()
    x = _pair(3)[0]
    cond = torch.randn(3, 5)
    w = 0.2
    out = network_velocity(net, cond, w)(x, torch.tensor(0.4, dtype=torch.float64))
    assert len(net.calls) == 1
    n, t, c, mask = net.calls[0]
    assert n == 6 and torch.equal(c, torch.cat([cond, cond]))
    assert mask.tolist() == [1, 1, 1, 0, 0, 0]
    torch.testing.assert_close(out, (1 + w) * (2 * x + 0.4) - w * (x + 0.4))


def test_network_velocity_matches_two_separate_unet_calls():
    cfg = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), condition_dim=8)
    torch.manual_seed(0)
    unet = UNet(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    cond = torch.randn(2, 8, generator=gen)
    t = torch.tensor(0.6)
    with torch.no_grad():
        batched = network_velocity(unet, cond, 0.7)(x, t)
        separate = guided(lambda x, t: unet(x, t.expand(len(x)), cond),
                          lambda x, t: unet(x, t.expand(len(x)), None), 0.7)(x, t)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)


def test_network_velocity_unbatched_is_two_separate_calls():
    net = _RecordingNetwork()
    x = _pair(3)[0]
    cond = torch.randn(3, 5)
    w = 0.2
    out = network_velocity(net, cond, w, batched=False)(x, torch.tensor(0.4, dtype=torch.float64))
    assert [(n, c is cond, c is None, mask) for n, _, c, mask in net.calls] == [(3, True, False, None), (3, False, True, None)]
    torch.testing.assert_close(out, (1 + w) * (2 * x + 0.4) - w * (x + 0.4))


@pytest.mark.parametrize("guidance, batched", [(0.0, True), (0.3, True), (0.3, False)])
def test_network_velocity_gives_every_row_its_source_noise_level(guidance, batched):
    """source_noise reaches the network as one level per row, in every path (None: not at all)."""
    net = _RecordingNetwork()
    x, cond = _pair(3)[0], torch.randn(3, 5)
    network_velocity(net, cond, guidance, batched=batched, source_noise=0.5)(x, torch.tensor(0.4))
    assert [level.tolist() for level in net.source_noise] == [[0.5] * n for n, *_ in net.calls]
    network_velocity(net, cond, guidance, batched=batched)(x, torch.tensor(0.4))
    assert net.source_noise[-1] is None


def test_network_velocity_with_source_noise_matches_two_separate_unet_calls():
    cfg = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), condition_dim=8, condition_on_source_noise=True)
    torch.manual_seed(0)
    unet = UNet(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    x, cond, t = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 8, generator=gen), torch.tensor(0.6)
    level = torch.full((2,), 0.5)
    with torch.no_grad():
        batched = network_velocity(unet, cond, 0.7, source_noise=0.5)(x, t)
        separate = guided(lambda x, t: unet(x, t.expand(len(x)), cond, None, level),
                          lambda x, t: unet(x, t.expand(len(x)), None, None, level), 0.7)(x, t)
        clean = network_velocity(unet, cond, 0.7, source_noise=0.0)(x, t)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched, clean, atol=1e-4)
