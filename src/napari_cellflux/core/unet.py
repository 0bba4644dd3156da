"""The CellFlux velocity network: the ADM ("guided diffusion") UNet with a perturbation condition.

One config dataclass, one module tree. Parameter names follow the authors' checkpoints
(``input_blocks.1.0.in_layers.2.weight`` ...) so published weights load without renaming.

Shapes: ``x`` (N, C, H, W) in [-1, 1], ``t`` (N,) in [0, 1], ``cond`` (N, condition_dim),
``source_noise`` (N,) (only for a network built with ``condition_on_source_noise``); the output
is a velocity with the shape of ``x``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from napari_cellflux.errors import InputError

MAX_PARAMETERS = 2_000_000_000  # 36x the largest published model (56 M)
_INT_LIMITS = (  # (field, lowest, highest): far beyond every published and demo config
    ("in_channels", 1, 64), ("out_channels", 1, 64), ("model_channels", 1, 2048), ("num_res_blocks", 1, 32),
    ("num_heads", 1, 128), ("num_head_channels", -1, 4096), ("condition_dim", 1, 1_000_000), ("norm_groups", 1, 1024),
)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the velocity UNet; field names follow the published ``unet_config``."""

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    num_res_blocks: int = 4
    attention_resolutions: tuple[int, ...] = (2,)
    num_heads: int = 1
    num_head_channels: int = -1
    use_new_attention_order: bool = True
    use_scale_shift_norm: bool = True
    conv_resample: bool = False
    dropout: float = 0.3
    condition_dim: int = 1024
    # Not in the published configs (ADM fixes 32); fewer groups allow the narrow CPU demo.
    norm_groups: int = 32
    # Not in the published configs: tell the network the noise level its source state started
    # with (0 in morph, the training noise level in sample). Late on the path the two starts
    # look alike, yet morph must scale its control's fibres where sample must draw new ones.
    condition_on_source_noise: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
            object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        except (TypeError, ValueError):
            raise InputError("UNetConfig: channel_mult and attention_resolutions must be lists of integers") from None
        self._check_sizes()
        for width in self.widths:
            if width % self.norm_groups:
                raise InputError(
                    f"UNetConfig: every level width model_channels x channel_mult must be a "
                    f"multiple of norm_groups={self.norm_groups} (GroupNorm groups); got {width} from "
                    f"model_channels={self.model_channels}, channel_mult={self.channel_mult}; "
                    "change model_channels or lower norm_groups"
                )

    def _check_sizes(self) -> None:
        # A config can come from an untrusted file: refuse absurd sizes before anything is built
        # (20,000 residual blocks would take minutes and gigabytes just to construct).
        for name, low, high in _INT_LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"UNetConfig: {name} must be an integer in [{low}, {high}], got {value!r}")
        if not 1 <= len(self.channel_mult) <= 8 or not all(1 <= m <= 16 for m in self.channel_mult):
            raise InputError(f"UNetConfig: channel_mult must hold 1 to 8 factors in [1, 16], got {self.channel_mult}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InputError(f"UNetConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if self.estimated_parameters > MAX_PARAMETERS:
            raise InputError(
                f"UNetConfig: about {self.estimated_parameters / 1e9:.1f} billion parameters "
                f"(model_channels={self.model_channels}, channel_mult={self.channel_mult}, "
                f"num_res_blocks={self.num_res_blocks}) is beyond any CellFlux model; the config is wrong"
            )

    @property
    def estimated_parameters(self) -> int:
        """Roughly the parameter count, from the 3 x 3 convolutions of the residual blocks (they
        dominate: ~2 per block, ~3 blocks per level and depth counting both UNet halves)."""
        return 18 * (3 * self.num_res_blocks + 2) * sum(w * w for w in self.widths)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def downsample_factor(self) -> int:
        """Images must have a side divisible by this (one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    def fits_weights_of(self, other: UNetConfig) -> bool:
        """Whether a network of this config takes the weights of one of ``other``'s: the same in
        all but dropout, which has no weights (a morph run may use its own, ``morph.dropout``)."""
        return replace(other, dropout=self.dropout) == self

    def heads_for(self, channels: int) -> int:
        return self.num_heads if self.num_head_channels == -1 else channels // self.num_head_channels

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "UNetConfig":
        """Build from a dict such as the published ``unet_config``; keys this model has no use
        for (``dims``, ``num_classes``, ``use_checkpoint``...) must hold their neutral values."""
        neutral = {
            "dims": 2,
            "num_classes": None,
            "use_checkpoint": False,
            "num_heads_upsample": -1,
            "resblock_updown": False,
            "with_fourier_features": False,
            "use_fp16": False,
        }
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {}
        for key, value in values.items():
            if key in known:
                kwargs[key] = value
            elif key in neutral:
                if value != neutral[key]:
                    raise InputError(
                        f"unet config: {key}={value!r} is not supported by this UNet "
                        f"(CellFlux uses {key}={neutral[key]!r})"
                    )
            else:
                raise InputError(f"unet config: unknown key {key!r}; known keys: {sorted(known)}")
        return cls(**kwargs)


PRESETS: dict[str, UNetConfig] = {
    "bbbc021": UNetConfig(in_channels=3, out_channels=3, condition_dim=1024),
    "rxrx1": UNetConfig(in_channels=6, out_channels=6, condition_dim=200),
    "cpg0000": UNetConfig(in_channels=5, out_channels=5, condition_dim=1224),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The published architecture for ``name`` (bbbc021, rxrx1, cpg0000), optionally changed."""
    if name not in PRESETS:
        raise InputError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t (N,) -> (N, dim): [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def group_norm(channels: int, cfg: UNetConfig) -> nn.GroupNorm:
    """ADM's GroupNorm32 without its explicit float32 upcast: CUDA autocast already runs
    group_norm in float32, and the CPU kernels accumulate bf16 input in float32; the upcast only
    added two full-tensor copies per norm (a quarter of the CPU demo's bf16 forward)."""
    return nn.GroupNorm(cfg.norm_groups, channels)


class ResBlock(nn.Module):
    """Two 3x3 convs; the embedding sets the second norm's scale and shift (or is added)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig):
        super().__init__()
        self.use_scale_shift_norm = cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(group_norm(in_ch, cfg), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        emb_out = 2 * out_ch if cfg.use_scale_shift_norm else out_ch
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cfg.time_embed_dim, emb_out))
        self.out_layers = nn.Sequential(
            group_norm(out_ch, cfg), nn.SiLU(), nn.Dropout(cfg.dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all pixels, with 1x1 conv1d projections named as in ADM."""

    def __init__(self, channels: int, cfg: UNetConfig):
        super().__init__()
        self.num_heads = cfg.heads_for(channels)
        if channels % self.num_heads:
            raise InputError(f"attention: {channels} channels do not split into {self.num_heads} heads")
        self.new_order = cfg.use_new_attention_order
        self.norm = group_norm(channels, cfg)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        qkv = self.qkv(self.norm(flat))
        head_ch = c // self.num_heads
        if self.new_order:  # q, k, v each hold all heads: (3, heads, ch)
            qkv = qkv.reshape(b, 3, self.num_heads, head_ch, h * w).transpose(0, 1)
        else:  # heads outermost: (heads, 3, ch)
            qkv = qkv.reshape(b, self.num_heads, 3, head_ch, h * w).permute(2, 0, 1, 3, 4)
        # Fused SDPA kernels (flash on CPU and CUDA) need the channel axis contiguous; strided
        # views fall back to the math path, 2-3x slower.
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(0)  # each (b, heads, hw, ch)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, h * w)
        return (flat + self.proj_out(a)).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class EmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the time/condition embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """v(x, t, cond): the CellFlux velocity field."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        emb_dim = cfg.time_embed_dim
        self.mol_embed_transform = nn.Linear(cfg.condition_dim, emb_dim)
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.condition_on_source_noise:
            self.source_noise_embed = nn.Linear(1, emb_dim)

        ch = cfg.widths[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, width in enumerate(cfg.widths):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, width, cfg)]
                ch = width
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.widths) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch, cfg.conv_resample)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(ResBlock(ch, ch, cfg), AttentionBlock(ch, cfg), ResBlock(ch, ch, cfg))

        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(cfg.widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), width, cfg)]
                ch = width
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(group_norm(ch, cfg), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
        source_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (N, C, H, W), t (N,) or scalar in [0, 1], cond (N, condition_dim) or None -> (N, C, H, W).

        cond_mask (N,) of 0/1 drops the condition of the rows that hold 0, so conditional and
        unconditional evaluations share one batch (classifier-free guidance in one forward).
        source_noise (N,): the noise level of each row's source state; required by, and only by,
        a network built with ``condition_on_source_noise``.
        """
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if self.config.condition_on_source_noise:
            if source_noise is None:
                raise InputError("this network conditions on its source's noise level: pass source_noise (N,)")
            emb = emb + self.source_noise_embed(source_noise.to(emb.dtype)[:, None])
        elif source_noise is not None:
            raise InputError("this network was built without condition_on_source_noise: pass no source_noise")
        if cond is not None:
            cond_emb = self.mol_embed_transform(cond.to(emb.dtype))
            # Multiplying by exactly 0 adds exactly nothing: the unconditional rows match cond=None.
            emb = emb + (cond_emb if cond_mask is None else cond_emb * cond_mask.to(cond_emb.dtype)[:, None])
        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
