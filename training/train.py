"""Train a CellFlux velocity field: ``python -m training.train --config demo [section.key=value ...]``.

Runs on one CPU, one GPU, or many through ``torchrun`` (DDP; gloo on CPU, NCCL on GPUs).
Every ``run.checkpoint_every`` steps and at the end, rank 0 writes ``state.pt`` (resumable
training state) and ``model.safetensors`` (the EMA weights as a self-contained model file)
atomically; ``--resume`` continues from ``state.pt`` and gives the same weights as an
uninterrupted run. The randomness of step s is seeded from (seed, s, rank) and the data
order from (seed, epoch), so the step number is the whole RNG state. With ``morph.steps`` a
second run follows in ``run.out/morph`` (the morph network, clean sources only), and the final
model file carries both.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from napari_cellflux.atomic import atomic_write, atomic_write_text, check_writable
from napari_cellflux.core.flow import flow_matching_loss, sample_t_skewed, x_t
from napari_cellflux.core.unet import UNet, UNetConfig, preset
from napari_cellflux.data.cells import load_cell
from napari_cellflux.errors import CellFluxError, InputError, run_main
from napari_cellflux.models.channels import Channel, parse_channels
from napari_cellflux.models.domain import control_statistics
from napari_cellflux.models.model_file import CellFluxModel, load_model_file, save_model
from napari_cellflux.models.normalization import Normalization
from napari_cellflux.runtime import Distributed, autocast_dtype, distributed_env, resolve_device

from .config import MorphNetworkConfig, OptimConfig, TrainConfig, load_config
from .data import TrainingData, load_training_data
from .ema import EMA

STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = ("step", "epoch", "loss", "images_per_s", "elapsed_s")
MORPH_FOLDER = "morph"


def init_distributed(device: torch.device) -> Distributed:
    """Join the torchrun process group if launched by torchrun (WORLD_SIZE > 1)."""
    env = distributed_env()
    if env.world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return env


def unet_config(cfg: TrainConfig, data: TrainingData) -> UNetConfig:
    base = preset(cfg.model.preset) if cfg.model.preset else UNetConfig()
    fields = {"in_channels": data.channels, "out_channels": data.channels, "condition_dim": data.vocabulary.dim}
    return dataclasses.replace(base, **{**fields, **cfg.model.overrides})


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1009 + rank


def training_step(unet, batch: dict, embeddings: torch.Tensor, cfg: TrainConfig, device, amp_dtype) -> torch.Tensor:
    """One flow-matching loss on a batch of (control, target) pairs (docs/method.md, Training)."""
    o = cfg.optim
    x0 = batch["control"].to(device, non_blocking=True)
    x1 = batch["target"].to(device, non_blocking=True)
    n = len(x0)
    noisy = bool(torch.rand(()) < o.noise_prob)  # per batch, as the authors do
    if noisy:
        x0 = x0 + o.noise_level * torch.randn_like(x0)
    cond = embeddings[batch["perturbation"].to(device)]
    # Classifier-free guidance training drops the condition of the whole batch. A zero mask
    # rather than cond=None keeps the condition layer in the graph (zero gradient), which DDP
    # needs: every rank must produce a gradient for every parameter.
    keep = 0.0 if torch.rand(()) < o.class_drop_prob else 1.0
    cond_mask = torch.full((n,), keep, device=device)
    mean = o.time_mean if noisy or o.clean_time_mean is None else o.clean_time_mean
    std = o.time_std if noisy or o.clean_time_std is None else o.clean_time_std
    t = sample_t_skewed(n, mean=mean, std=std).to(device)
    source_noise = None
    if getattr(unet, "module", unet).config.condition_on_source_noise:  # DDP wraps the UNet in .module
        source_noise = torch.full((n,), o.noise_level if noisy else 0.0, device=device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        predicted = unet(x_t(x0, x1, t), t, cond, cond_mask, source_noise)
    return flow_matching_loss(predicted.float(), x0, x1)


def learning_rate(optim: OptimConfig, step: int, total_steps: int) -> float:
    """The rate for ``step`` (0-based) of ``total_steps``: ``optim.lr``, falling linearly towards 0
    over the last ``optim.decay_steps`` steps."""
    if step < total_steps - optim.decay_steps:
        return optim.lr  # exactly, so a run is the same as a constant-rate one up to the cool-down
    return optim.lr * (total_steps - step) / optim.decay_steps


CONTROL_SAMPLE = 300  # training controls summarised in the model file (enough for 1st-99th percentiles)


def training_control_statistics(data: TrainingData, channels: tuple[Channel, ...], pixel_size_um: float | None = None) -> dict:
    """:func:`control_statistics` of up to CONTROL_SAMPLE control cells of the training split
    (those the pairs draw from), chosen with the run's seed, so every export records the same."""
    rows = np.unique(np.concatenate(list(data.pairs.controls_by_batch.values())))
    chosen = np.sort(np.random.default_rng(data.seed).choice(rows, min(CONTROL_SAMPLE, len(rows)), replace=False))
    paths = data.pairs.table.cells["path"].to_numpy()
    pixels = np.stack([load_cell(paths[i]) for i in chosen])
    return control_statistics(pixels, [c.name for c in channels], pixel_size_um)


def export_model(path: Path, weights: UNet, data: TrainingData, cfg: TrainConfig, step: int, epoch: int,
                 guide: dict | None = None) -> str:
    """Write the self-contained model file, with the statistics of the training controls and,
    once the run has passed ``optim.guide_step``, the ``guide`` weights (a state dict of
    ``weights``' architecture); without them the file recommends no autoguidance."""
    guide_unet, sampling = None, cfg.sampling
    if guide is not None:
        guide_unet = UNet(weights.config)
        guide_unet.load_state_dict(guide)
    else:  # before the guide step (or without one) the file cannot recommend what it does not carry
        sampling = dataclasses.replace(sampling, autoguidance=0.0)
    model = CellFluxModel(
        guide=guide_unet,
        guide_step=cfg.optim.guide_step if guide is not None else None,
        unet=weights,
        vocabulary=data.vocabulary,
        channels=parse_channels(cfg.data.channels) if cfg.data.channels else data.default_channels,
        image_size=cfg.model.image_size,
        normalization=Normalization(255.0),
        sampling=sampling,
        training=cfg.to_dict(),
        provenance={"trained_with": "python -m training.train", "config": cfg.name, "step": step, "epoch": epoch,
                    "data": str(data.source), "held_out": list(cfg.data.held_out)},
    )
    model.control_statistics = training_control_statistics(data, model.channels, model.pixel_size_um)
    return save_model(model, path)


def save_state(path: Path, unet: UNet, ema: EMA, optimizer, scaler, step: int, epoch: int, batch_in_epoch: int, cfg: TrainConfig,
               guide: dict | None = None) -> None:
    """The resumable state: plain tensors and containers only, so it loads with weights_only=True."""
    state = {
        **({"guide": guide, "guide_step": cfg.optim.guide_step} if guide is not None else {}),
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "model": unet.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "config": cfg.to_dict(),
    }
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except RuntimeError as err:  # torch reports a failed write as "unexpected pos ..."
        raise CellFluxError(f"could not write {path} ({str(err).splitlines()[0]}); the disk may be full: free space "
                            "and resume with --resume (the last checkpoint is intact)") from None


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own text can suggest unsafe loading; never pass it on
        raise InputError(f"cannot resume from {path}: it is not a readable training state (damaged or foreign); "
                         "delete the run folder's state.pt to start afresh") from None
    if not isinstance(state, dict) or not {"step", "model", "ema", "optimizer"} <= set(state):
        raise InputError(f"cannot resume from {path}: not a training state of this program; use another run.out")
    return state


# Settings that may differ on --resume: they change when and where the run works, not what it
# computes (sampling.* too: the defaults the model file recommends, not part of training).
RESUMABLE_CHANGES = ("optim.steps", "optim.epochs", "optim.decay_steps", "run.checkpoint_every", "run.log_every",
                     "run.device", "run.threads", "data.num_workers", "run.out", "optim.guide_step", "morph.steps")


def check_resumable(saved: dict, now: dict, path: Path) -> None:
    """Refuse to resume with settings that would make the run another run (the restored optimizer,
    data position and weights belong to the saved ones), naming each key that differs."""
    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "overrides" else
                       {f"{prefix}{key}": json.loads(json.dumps(value))})
        return out

    a, b = flat(saved), flat(now)
    differ = sorted(k for k in set(a) | set(b)
                    if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("sampling."))
    if differ:
        shown = "; ".join(f"{k}: saved {a.get(k)!r}, now {b.get(k)!r}" for k in differ[:5])
        raise InputError(
            f"cannot resume {path}: {shown}{' ...' if len(differ) > 5 else ''}. Resume with the saved settings "
            f"(only {', '.join(RESUMABLE_CHANGES[:4])} ... may change), or start a new run in another run.out"
        )


def check_rates_kept(saved: dict, optim: OptimConfig, total_steps: int, batches_per_epoch: int, step: int, path: Path) -> None:
    """The length and cool-down may change on resume (to train on, or to add a cool-down) only if
    the steps already run keep their learning rates, so the run stays the one a straight run gives."""
    saved_epochs = saved.get("epochs")
    saved_total = saved_epochs * batches_per_epoch if saved_epochs is not None else saved.get("steps", total_steps)
    before = dataclasses.replace(optim, decay_steps=saved.get("decay_steps", 0))
    if all(learning_rate(before, k, saved_total) == learning_rate(optim, k, total_steps) for k in range(step)):
        return
    changed = [f"optim.{key} {saved.get(key, 0)} -> {getattr(optim, key)}" for key in ("steps", "epochs", "decay_steps")
               if saved.get(key, 0 if key == "decay_steps" else None) != getattr(optim, key)]
    raise InputError(f"cannot resume {path}: {', '.join(changed)} changes the learning rate of steps already run "
                     "(their cool-down); resume with the saved values, or start a new run in another run.out")


def resumed_guide(state: dict, ema: EMA, guide_step: int | None, path: Path) -> dict | None:
    """The guide weights a resumed run carries on with: the saved ones, or the EMA now if the run
    stopped exactly at ``guide_step``. A guide step set or changed on resume must still lie ahead
    (or at the saved step), so the guide is always the EMA at ``guide_step`` of this very run."""
    step, saved = state["step"], state.get("guide_step")
    if saved is not None and saved != guide_step:
        raise InputError(f"cannot resume {path} with optim.guide_step {guide_step}: its guide was kept at step {saved}; "
                         f"resume with optim.guide_step={saved}")
    if saved is not None:
        return state["guide"]
    if guide_step is None or guide_step > step:
        return None
    if guide_step == step:
        return ema.snapshot()
    raise InputError(f"cannot resume {path} with optim.guide_step {guide_step}: the run is at step {step} already, past it; "
                     "choose a guide step >= the saved step, or train a new run with optim.guide_step set from the start")


def morph_network_config(cfg: TrainConfig) -> TrainConfig:
    """The run that trains ``cfg``'s morph network: the same config on clean-source batches only
    (morph's regime; sample's noised batches made the shared network over-shoot textures in
    morph, docs/modes.md), without a guide (morph runs none), for ``morph.steps`` steps, in
    run.out/morph."""
    optim = dataclasses.replace(cfg.optim, steps=cfg.morph.steps, epochs=None, noise_prob=0.0, guide_step=None)
    run = dataclasses.replace(cfg.run, out=str(Path(cfg.run.out) / MORPH_FOLDER))
    model = cfg.model if cfg.morph.dropout is None else dataclasses.replace(
        cfg.model, overrides={**cfg.model.overrides, "dropout": cfg.morph.dropout})
    return dataclasses.replace(cfg, model=model, optim=optim, run=run, morph=MorphNetworkConfig())


def attach_morph_network(path: Path, weights: UNet, step: int) -> str:
    """Rewrite the model file at ``path`` with ``weights`` as its morph network; returns its sha256.
    The weights must fit the model's architecture in all but dropout (``morph.dropout`` may differ
    from the main run's and has no weights); they go into a network of the model's own config, and
    the model is rebuilt, not patched."""
    model = load_model_file(path)
    if not model.config.fits_weights_of(weights.config):
        raise InputError(f"{path}: the morph network must have the model's own architecture (trained with the same config)")
    network = UNet(model.config)
    network.load_state_dict(weights.state_dict())  # copies onto the new CPU network
    return save_model(dataclasses.replace(model, morph=network, morph_step=step), path)


def remove_stale_parts(out: Path) -> None:
    """Delete temporary files of writes a killed run never finished (a paper-model state is ~0.9 GB)."""
    for part in out.glob(".*.part"):
        part.unlink(missing_ok=True)


class MetricsLog:
    """metrics.csv in the run folder; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        lines = [",".join(METRIC_COLUMNS)] + [",".join(r[c] for c in METRIC_COLUMNS) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")
        self.tensorboard = _tensorboard(path.parent)

    def write(self, **values) -> None:
        with open(self.path, "a") as f:
            f.write(",".join(f"{values[c]:.6g}" if isinstance(values[c], float) else str(values[c]) for c in METRIC_COLUMNS) + "\n")
        if self.tensorboard is not None:
            for key in ("loss", "images_per_s"):
                self.tensorboard.add_scalar(f"train/{key}", values[key], values["step"])


def _tensorboard(folder: Path):
    with contextlib.suppress(ImportError):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder / "tensorboard"))
    return None


@dataclass
class TrainResult:
    model_path: Path
    """The final model file (written by rank 0)."""
    unet: UNet
    """This process's trained weights (identical on every rank)."""
    ema: EMA


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Run training to ``cfg.optim.steps`` (or ``cfg.optim.epochs``), then, with ``cfg.morph.steps``,
    the morph network's run (:func:`morph_network_config`), whose EMA weights the final model
    file then carries as its morph network. ``resume`` continues whichever is unfinished."""
    if cfg.run.threads is not None:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device, distributed_env())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ddp = init_distributed(device)
    try:
        result = _train(cfg, resume, quiet, device, ddp)
        if cfg.morph.steps:
            morph_cfg = morph_network_config(cfg)
            if ddp.is_main and not quiet:
                print(f"training: the morph network, on clean sources only, in {morph_cfg.run.out}", file=sys.stderr)
            morph = _train(morph_cfg, resume and (Path(morph_cfg.run.out) / STATE_FILE).is_file(), quiet, device, ddp)
            if ddp.is_main:
                attach_morph_network(result.model_path, morph.ema.model, cfg.morph.steps)
        return result
    finally:
        if ddp.world_size > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, quiet: bool, device: torch.device, ddp: Distributed) -> TrainResult:
    out = Path(cfg.run.out)
    state_path = out / STATE_FILE
    if ddp.is_main:
        check_writable(out, what="run.out", folder=True)
        if not resume and state_path.is_file():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another run.out")
        if resume and not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {STATE_FILE} in {out}; run without --resume to start")
        remove_stale_parts(out)
        # Rank 0 builds the synthetic screen (atomically) before any other rank reads it.
        data = load_training_data(cfg.data, image_size=cfg.model.image_size, seed=cfg.run.seed, build=True)
    if ddp.world_size > 1:
        dist.barrier()
    if not ddp.is_main:
        data = load_training_data(cfg.data, image_size=cfg.model.image_size, seed=cfg.run.seed, build=False)

    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    unet = UNet(unet_config(cfg, data)).to(device)
    ema = EMA(unet, max_decay=cfg.optim.ema_max_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    amp_dtype = autocast_dtype(cfg.optim.precision, device, training=True)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none (CPU or GPU)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    embeddings = data.vocabulary.embeddings.to(device)
    total_steps = cfg.optim.steps
    if cfg.optim.epochs is not None:
        total_steps = cfg.optim.epochs * data.batches_per_epoch(cfg.optim.batch_size, ddp.world_size)

    # The guide is a less-trained snapshot: at or past the last step there is none to keep.
    guide_step = cfg.optim.guide_step if cfg.optim.guide_step is not None and cfg.optim.guide_step < total_steps else None
    if cfg.optim.guide_step is not None and guide_step is None and ddp.is_main and not quiet:
        print(f"training: note: optim.guide_step {cfg.optim.guide_step} is not below the run's {total_steps} steps, so the "
              "model file will carry no autoguidance guide and recommend none; lower optim.guide_step to keep one",
              file=sys.stderr)
    step, epoch, batch_in_epoch, guide = 0, 0, 0, None
    if resume:
        state = load_state(state_path)
        check_resumable(state.get("config", {}), cfg.to_dict(), state_path)
        check_rates_kept(state.get("config", {}).get("optim", {}), cfg.optim, total_steps,
                         data.batches_per_epoch(cfg.optim.batch_size, ddp.world_size), state["step"], state_path)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        guide = resumed_guide(state, ema, guide_step, state_path)
        if ddp.is_main:  # a crash between the two checkpoint writes leaves the model file behind the state
            export_model(out / MODEL_FILE, ema.model, data, cfg, step, epoch, guide)

    model = DistributedDataParallel(unet, device_ids=[device.index] if device.type == "cuda" else None) if ddp.world_size > 1 else unet
    log = None
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", _yaml(cfg))
        log = MetricsLog(out / METRICS_FILE, step)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=quiet or not ddp.is_main, unit="step", dynamic_ncols=True)
    started, last_time, last_step = time.time(), time.time(), step
    unet.train()
    while step < total_steps:
        for batch in data.loader(epoch, start_batch=batch_in_epoch, batch_size=cfg.optim.batch_size,
                                 rank=ddp.rank, world_size=ddp.world_size, num_workers=cfg.data.num_workers):
            torch.manual_seed(step_seed(cfg.run.seed, step, ddp.rank))
            loss = training_step(model, batch, embeddings, cfg, device, amp_dtype)
            if not torch.isfinite(loss):
                raise CellFluxError(f"loss became {loss.item()} at step {step}; lower optim.lr or use optim.precision=fp32")
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.optim, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            ema.update(unet)
            step += 1
            batch_in_epoch += 1
            if step == guide_step:
                guide = ema.snapshot()
            bar.update(1)
            if ddp.is_main and (step % cfg.run.log_every == 0 or step == total_steps):
                now = time.time()
                rate = (step - last_step) * cfg.optim.batch_size * ddp.world_size / max(now - last_time, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}")
                log.write(step=step, epoch=epoch, loss=loss.item(), images_per_s=rate, elapsed_s=now - started)
                last_time, last_step = now, step
            if step % cfg.run.checkpoint_every == 0 or step == total_steps:
                if ddp.is_main:
                    save_state(state_path, unet, ema, optimizer, scaler, step, epoch, batch_in_epoch, cfg, guide)
                    export_model(out / MODEL_FILE, ema.model, data, cfg, step, epoch, guide)
            if step >= total_steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    return TrainResult(model_path=out / MODEL_FILE, unet=unet, ema=ema)


def _yaml(cfg: TrainConfig) -> str:
    import yaml

    values = cfg.to_dict()
    values["optim"]["betas"] = list(values["optim"]["betas"])
    return yaml.safe_dump(values, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="demo, bbbc021, rxrx1, cpg0000, or a YAML file")
    parser.add_argument("--resume", action="store_true", help="continue the run in run.out from its state.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.steps=500 run.out=runs/x")
    args = parser.parse_args(argv)

    def run() -> int:
        cfg = load_config(args.config, args.overrides)
        try:
            result = train(cfg, resume=args.resume, quiet=args.quiet)
        except torch.cuda.OutOfMemoryError:
            raise CellFluxError(
                "the GPU ran out of memory; lower optim.batch_size (or use more GPUs with torchrun); "
                "the last checkpoint is intact, resume with --resume"
            ) from None
        if distributed_env().is_main:
            print(f"model written to {result.model_path}")
        return 0

    return run_main("training", run)


if __name__ == "__main__":
    sys.exit(main())
