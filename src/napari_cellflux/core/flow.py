"""Flow matching from control cells to perturbed cells (CellFlux, Sec. 3), as pure functions.

All images are (N, C, H, W) tensors in the model's [-1, 1] space; times are (N,) in [0, 1].
Source x0: control cells (plus noise); target x1: perturbed cells of the same batch.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""v(x, t) -> dx/dt with x (N, C, H, W) and t (N,)."""


def broadcast_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) times -> (N, 1, 1, 1) so they scale whole images."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def x_t(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight path between source and target: x_t = (1 - t) x0 + t x1."""
    t = broadcast_time(t, x0)
    return (1 - t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """d x_t / dt along the straight path: u = x1 - x0 (independent of t)."""
    return x1 - x0


def flow_matching_loss(predicted: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the predicted and the target velocity (a scalar)."""
    return torch.mean((predicted - target_velocity(x0, x1)) ** 2)


# The paper's training-time skew: log sigma ~ N(TIME_MEAN, TIME_STD^2). training's OptimConfig
# takes its defaults from here, so the two cannot drift.
TIME_MEAN, TIME_STD = -1.2, 1.2


def sample_t_skewed(
    n: int, *, mean: float = TIME_MEAN, std: float = TIME_STD, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Training times: sigma = exp(N(mean, std^2)), t = 1 / (1 + sigma), clipped to [1e-4, 1].

    The median is 1 / (1 + e^-1.2) ~ 0.77: training concentrates on the later, near-perturbed
    part of the path, as the EDM noise distribution concentrates on small noise levels.
    """
    sigma = torch.exp(mean + std * torch.randn(n, generator=generator, device=device))
    return (1 / (1 + sigma)).clamp(1e-4, 1.0)


def x_init(control: torch.Tensor, noise: torch.Tensor, noise_level: float) -> torch.Tensor:
    """Source state of the ODE: x_init = control + noise_level * noise."""
    return control + noise_level * noise


def guidance_mix(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: v = (1 + w) v(x, t, c) - w v(x, t, none)."""
    return (1 + guidance) * v_cond - guidance * v_uncond


def guided(conditional: Velocity, unconditional: Velocity, guidance: float) -> Velocity:
    """Guided velocity from separate conditional and unconditional fields (the authors' way).

    With w = 0 the unconditional network is never called.
    """
    if guidance == 0:
        return conditional
    return lambda x, t: guidance_mix(conditional(x, t), unconditional(x, t), guidance)


def autoguidance_mix(v_model: torch.Tensor, v_guide: torch.Tensor, autoguidance: float) -> torch.Tensor:
    """Autoguidance (Karras et al. 2024): v = (1 + a) v_model - a v_guide, extrapolating away from
    a less-trained snapshot of the same network (their weight w is 1 + a)."""
    return (1 + autoguidance) * v_model - autoguidance * v_guide


def share_mix(v_own: torch.Tensor, v_partner: torch.Tensor, share: float) -> torch.Tensor:
    """Two networks' estimates of one velocity field, mixed: v = (1 - s) v_own + s v_partner."""
    return (1 - share) * v_own + share * v_partner


def network_velocity(
    network, cond: torch.Tensor | None, guidance: float = 0.0, *, batched: bool = True, source_noise: float | None = None,
    guide=None, autoguidance: float = 0.0, partner=None, partner_share: float = 0.0,
) -> Velocity:
    """The sampling velocity of ``network(x, t, cond, cond_mask, source_noise)`` for a (N, D) condition.

    With guidance, the conditional and unconditional halves run as one batch of 2N: one
    forward per evaluation instead of two, same result. ``batched=False`` runs them as two
    forwards (the authors' way; the reference the batched path is tested against).
    ``source_noise``: the noise level of x_init, for a network that conditions on it (else None).
    ``guide``: a network called like ``network`` that, with ``autoguidance`` a > 0, the velocity
    is pushed away from (:func:`autoguidance_mix`), each side classifier-free guided alike.
    ``partner``: another network trained for the same velocity that, with ``partner_share`` s > 0,
    is mixed in (:func:`share_mix`; morph's morph and main networks), guided alike.
    """
    own = _guided_velocity(network, cond, guidance, batched, source_noise)
    if guide is not None and autoguidance:
        bad = _guided_velocity(guide, cond, guidance, batched, source_noise)
        own = _autoguided(own, bad, autoguidance)
    if partner is not None and partner_share:
        other = _guided_velocity(partner, cond, guidance, batched, source_noise)
        own = _shared(own, other, partner_share)
    return own


def _autoguided(own: Velocity, bad: Velocity, autoguidance: float) -> Velocity:
    return lambda x, t: autoguidance_mix(own(x, t), bad(x, t), autoguidance)


def _shared(own: Velocity, other: Velocity, share: float) -> Velocity:
    return lambda x, t: share_mix(own(x, t), other(x, t), share)


def _guided_velocity(network, cond: torch.Tensor | None, guidance: float, batched: bool, source_noise: float | None) -> Velocity:
    def levels(x: torch.Tensor) -> torch.Tensor | None:
        return None if source_noise is None else torch.full((len(x),), float(source_noise), device=x.device)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(x, t.expand(len(x)), cond, None, levels(x))

    if cond is None or guidance == 0:
        return velocity
    if not batched:
        return guided(velocity, lambda x, t: network(x, t.expand(len(x)), None, None, levels(x)), guidance)
    mask = torch.cat([torch.ones(len(cond)), torch.zeros(len(cond))]).to(cond.device)
    both = torch.cat([cond, cond])

    def one_forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        doubled = torch.cat([x, x])
        v_cond, v_uncond = network(doubled, t.expand(2 * len(x)), both, mask, levels(doubled)).chunk(2)
        return guidance_mix(v_cond, v_uncond, guidance)

    return one_forward
