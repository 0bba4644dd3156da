"""The evaluation report: ``report.md`` beside PNG plots (loss curve, metrics per checkpoint,
recovered effects, per-batch intensities) and example grids (real / generated / control).

Drawn with matplotlib's object API (no pyplot, no display needed); every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from napari_cellflux.atomic import atomic_write_bytes, atomic_write_text
from napari_cellflux.errors import InputError

MAX_EXAMPLE_PERTURBATIONS = 24
EXAMPLES_PER_ROW = 8
METHOD_LABELS = {"cellflux": "CellFlux", "copy_control": "copy control"}
ROWS = (
    ("FIDo", "FIDo", 1.0), ("FIDc", "FIDc", 1.0), ("KIDo", "KIDo x100", 100.0), ("KIDc", "KIDc x100", 100.0),
    ("moa_accuracy", "MoA accuracy (%)", 100.0), ("morphology_error", "morphology error (SD units)", 1.0),
    ("effect_error", "effect error vs real (mean abs log ratio)", 1.0),
    ("effect_error_vs_truth", "effect error vs truth (mean abs log ratio)", 1.0),
    ("batch_intensity_error", "batch intensity error (relative)", 1.0),
)


def check_matplotlib() -> None:
    """Fail early, before any generation, when the report cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise InputError("--report needs matplotlib: pip install matplotlib (or leave out --report)") from err


def _figure(width: float, height: float):
    check_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _fmt(value, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    value = value * scale
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def summary_table(result: dict, group: str) -> list[str]:
    methods = list(result["methods"])
    reference = result["reference"][group]
    lines = ["| metric | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " | real test cells |",
             "|---|" + "---|" * (len(methods) + 1)]
    for key, label, scale in ROWS:
        ref = reference.get(key)
        lines.append(f"| {label} | " + " | ".join(_fmt(result["methods"][m][group][key], scale) for m in methods)
                     + f" | {_fmt(ref, scale) if key in reference else ''} |")
    counts = result["methods"][methods[0]][group]
    lines.append(f"\n{counts['n_cells']} cells, {counts['n_perturbations']} perturbations.")
    return lines


def targets_table(targets: dict) -> list[str]:
    """The quality targets on the seen perturbations (evaluate.targets), met or not."""
    if not targets["effects"]:
        return []
    yes = {True: "yes", False: "**no**"}
    lines = ["", "## Targets (seen perturbations)", "",
             "Effect size = ratio - 1; within 25% of the real cells' measured effect and of the designed truth.", "",
             "| perturbation | feature | truth | real | CellFlux | sign | within 25% of real | of truth |",
             "|---|---|---|---|---|---|---|---|"]
    for e in targets["effects"]:
        lines.append(f"| {e['perturbation']} | {e['feature']} | {_fmt(e['truth'])} | {_fmt(e['real'])} | "
                     f"{_fmt(e['generated'])} | {yes[e['sign_right']]} | {yes[e['within_25pct_of_real']]} | "
                     f"{yes[e['within_25pct_of_truth']]} |")
    lines += ["", *[f"- {key.replace('_', ' ')}: {yes[met]}" for key, met in targets["met"].items()]]
    return lines


def read_loss_curve(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(step, loss) from a training run's metrics.csv, or None."""
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and r.get("loss")]
    if not rows:
        return None
    return np.array([float(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def plot_loss(curve: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    steps, loss = curve
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    if len(loss) >= 10:
        window = max(5, len(loss) // 15)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("training step")
    ax.set_ylabel("flow-matching loss (MSE)")
    ax.set_yscale("log")
    ax.legend()
    _save(fig, path)


def plot_checkpoints(result: dict, path: Path) -> None:
    """Each summary metric against the checkpoints' training step, the copy-control baseline dashed."""
    entries = result["checkpoints"]
    x = [e["step"] if e["step"] is not None else i for i, e in enumerate(entries)]
    keys = [(k, label, s) for k, label, s in ROWS if any(e["summary"]["all"][k] is not None for e in entries)]
    fig = _figure(4 * min(3, len(keys)), 3 * -(-len(keys) // 3))
    for i, (key, label, scale) in enumerate(keys):
        ax = fig.add_subplot(-(-len(keys) // 3), min(3, len(keys)), i + 1)
        y = [None if e["summary"]["all"][key] is None else e["summary"]["all"][key] * scale for e in entries]
        ax.plot(x, [np.nan if v is None else v for v in y], "o-", label="CellFlux")
        baseline = result["methods"]["copy_control"]["all"][key]
        if baseline is not None:
            ax.axhline(baseline * scale, ls="--", color="gray", label="copy control")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training step")
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_effects(result: dict, path: Path) -> bool:
    """Treated / control ratios: each method (and the truth) against the real cells' ratio."""
    points = {m: [] for m in (*result["methods"], "truth")}
    for entry in result["perturbations"].values():
        for values in entry["effect"].values():
            if values["real"] is None:
                continue
            for m in points:
                if values.get(m) is not None:
                    points[m].append((values["real"], values[m]))
    if not any(points.values()):
        return False
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    styles = {"cellflux": ("o", "tab:blue"), "copy_control": ("s", "tab:gray"), "truth": ("x", "tab:red")}
    labels = {**METHOD_LABELS, "truth": "designed truth"}
    everything = [v for pts in points.values() for p in pts for v in p]
    lo, hi = min(everything) / 1.1, max(everything) * 1.1
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    for m, pts in points.items():
        if pts:
            marker, colour = styles.get(m, ("^", None))
            ax.scatter(*np.array(pts).T, marker=marker, color=colour, alpha=0.7, label=labels.get(m, m))
    from matplotlib.ticker import NullFormatter

    ticks = [t for t in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0) if lo <= t <= hi]
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, [f"{t:g}" for t in ticks])
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("real treated / control (measured)")
    ax.set_ylabel("method treated / control")
    ax.set_title("recovered effects (one point per perturbation and feature)", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_batches(result: dict, path: Path) -> None:
    batches = result["batches"]
    names = list(batches)
    methods = ["real", *result["methods"]]
    channels = len(next(iter(batches.values()))["crop_mean"]["real"])
    fig = _figure(3.2 * channels, 3)
    for c in range(channels):
        ax = fig.add_subplot(1, channels, c + 1)
        width = 0.8 / len(methods)
        for k, m in enumerate(methods):
            values = [batches[b]["crop_mean"][m][c] for b in names]
            ax.bar(np.arange(len(names)) + k * width, values, width, label=METHOD_LABELS.get(m, m))
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, fontsize=7)
        ax.set_title(f"channel {c}: mean crop intensity", fontsize=9)
        if c == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def composite(pixels: np.ndarray, colours: list[tuple[float, float, float]], high: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> float RGB (N, H, W, 3): each channel scaled by ``high`` and tinted."""
    scaled = np.clip(pixels.astype(np.float64) / high[None, :, None, None], 0.0, 1.0)
    rgb = np.einsum("nchw,ck->nhwk", scaled, np.array(colours))
    return np.clip(rgb, 0.0, 1.0)


def plot_examples(name: str, rows: dict[str, np.ndarray], colours, high: np.ndarray, path: Path) -> None:
    n = min(EXAMPLES_PER_ROW, min(len(v) for v in rows.values()))
    h, w = next(iter(rows.values())).shape[2:]
    fig = _figure(1.1 * n + 1.2, 1.2 * len(rows) + 0.4)
    ax = fig.add_subplot()
    grid = np.ones((len(rows) * (h + 2), n * (w + 2), 3))
    for r, pixels in enumerate(rows.values()):
        images = composite(pixels[:n], colours, high)
        for i, image in enumerate(images):
            grid[r * (h + 2):r * (h + 2) + h, i * (w + 2):i * (w + 2) + w] = image
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([r * (h + 2) + h / 2 for r in range(len(rows))], list(rows))
    ax.set_xticks([])
    ax.set_title(name, fontsize=10)
    _save(fig, path)


def _colours(models, channels: int) -> list[tuple[float, float, float]]:
    from matplotlib.colors import to_rgb

    out = []
    for c in range(channels):
        name = models[-1].channels[c].color if models and c < len(models[-1].channels) else "gray"
        try:
            out.append(to_rgb(name))
        except ValueError:
            out.append((1.0, 1.0, 1.0))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "perturbation"


def write_report(folder, result: dict, *, selection, real, controls, generated, models, checkpoints) -> Path:
    """Write ``report.md`` and its PNGs into ``folder``; returns the Markdown file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data, sampling = result["data"], result["sampling"]
    lines = [
        "# CellFlux evaluation",
        "",
        f"- checkpoint: `{result['checkpoint']['path']}` (step {result['checkpoint']['step']}, "
        f"sha256 {str(result['checkpoint']['sha256'])[:12]})",
        f"- data: `{data['path']}` ({data['format']}, split {data['split']}, {data['n_treated']} treated cells, "
        f"{len(data['seen'])} seen + {len(data['unseen'])} unseen perturbations)",
        f"- sampling: {sampling['steps']} {sampling['solver']} steps on the {sampling['grid']} grid, guidance "
        f"{sampling['guidance']:g}, noise level {sampling['noise_level']:g}, seed {sampling['seed']}",
        f"- FID/KID features: {result['features']['inception_weights'] or 'none (skipped)'}",
        f"- MoA classifier: {result['moa']['classifier'] or 'none'}"
        + (f" on {result['moa']['features']} features, {result['moa']['n_train_cells']} real training cells"
           if result["moa"]["classifier"] else ""),
        "",
        "Lower is better for every metric but MoA accuracy. *copy control* is the baseline that returns the "
        "control cells unchanged; *real test cells* is the reference: the MoA classifier on real treated "
        "cells and the measured real effects against the designed truth.",
    ]
    for group in ("all", "seen", "unseen"):
        if result["methods"]["cellflux"][group]["n_cells"]:
            lines += ["", f"## {group.capitalize()} perturbations", "", *summary_table(result, group)]
    curve = read_loss_curve(Path(checkpoints[-1]).parent / "metrics.csv")
    lines += ["", "## Training"]
    if curve is not None:
        plot_loss(curve, folder / "loss.png")
        lines += ["", "![training loss](loss.png)"]
    else:
        lines += ["", f"No metrics.csv beside {checkpoints[-1]}: no loss curve."]
    if len(result["checkpoints"]) > 1:
        plot_checkpoints(result, folder / "checkpoints.png")
        lines += ["", "| checkpoint | step | FIDo | morphology error | effect error |", "|---|---|---|---|---|"]
        for e in result["checkpoints"]:
            s = e["summary"]["all"]
            lines.append(f"| `{Path(e['path']).name}` | {e['step']} | {_fmt(s['FIDo'])} | "
                         f"{_fmt(s['morphology_error'])} | {_fmt(s['effect_error'])} |")
        lines += ["", "![metrics per checkpoint](checkpoints.png)"]
    lines += ["", "## Effects", ""]
    if plot_effects(result, folder / "effects.png"):
        lines += ["![recovered effects](effects.png)", ""]
    lines += ["| perturbation | group | feature | truth | real | CellFlux | copy control |", "|---|---|---|---|---|---|---|"]
    for name, entry in result["perturbations"].items():
        for feature, v in entry["effect"].items():
            lines.append(f"| {name} | {entry['group']} | {feature} | {_fmt(v['truth'])} | {_fmt(v['real'])} | "
                         f"{_fmt(v['cellflux'])} | {_fmt(v['copy_control'])} |")
    lines += targets_table(result["targets"])
    lines += ["", "## Batches", "", "Mean crop intensity (0-255) of each batch's cells, per channel.", ""]
    plot_batches(result, folder / "batches.png")
    lines += ["![per-batch intensity](batches.png)", ""]
    lines += ["## Examples", "", "Rows: real treated cells, generated cells, the control cells they came from.", ""]
    channels = real.shape[1]
    high = np.maximum(np.percentile(real, 99.5, axis=(0, 2, 3)), 1.0)
    colours = _colours(models, channels)
    (folder / "examples").mkdir(exist_ok=True)
    for k, name in enumerate(selection.names[:MAX_EXAMPLE_PERTURBATIONS]):
        index = selection.index(name)
        file = f"examples/{k:02d}_{_safe(name)}.png"
        plot_examples(name, {"real": real[index], "CellFlux": generated[index], "control": controls[index]},
                      colours, high, folder / file)
        lines.append(f"![{name}]({file})")
    if len(selection.names) > MAX_EXAMPLE_PERTURBATIONS:
        lines.append(f"\n(first {MAX_EXAMPLE_PERTURBATIONS} of {len(selection.names)} perturbations shown)")
    if result["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]]]
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
