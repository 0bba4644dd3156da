"""Every bad input ends in one clear line and exit status 2 (CLI) or the package's error type (API):
the line names the input, nothing is written, no traceback, and no message suggests loading a
file unsafely. One case per class of mistake (docs/errors.md)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from plugin_helpers import tiny_model_file
from safetensors import safe_open
from safetensors.torch import save_file

from napari_cellflux import api
from napari_cellflux.cli import main
from napari_cellflux.errors import CellFluxError, InputError, describe
from napari_cellflux.generation.controls import crops_from_file


def rewrite_metadata(src: Path, dst: Path, edit) -> Path:
    """A copy of the model file ``src`` whose napari-cellflux metadata JSON is ``edit(meta)``."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["cellflux"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edited = edit(meta)
    save_file(tensors, str(dst), metadata={"cellflux": edited if isinstance(edited, str) else json.dumps(edited)})
    return dst


def set_in(meta: dict, dotted: str, value):
    *parents, leaf = dotted.split(".")
    target = meta
    for part in parents:
        target = target[part]
    target[leaf] = value
    return meta


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The files the cases point at, made once; the cases run in a folder of their own."""
    d = tmp_path_factory.mktemp("inputs")
    model = tiny_model_file(d / "tiny.safetensors")
    rng = np.random.default_rng(0)
    np.save(d / "good.npy", rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    np.save(d / "floats01.npy", rng.random((4, 3, 32, 32)).astype(np.float32))
    np.save(d / "nan.npy", np.full((2, 3, 32, 32), np.nan, dtype=np.float32))
    np.save(d / "empty.npy", np.zeros((0, 3, 32, 32), dtype=np.uint8))
    np.save(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "truncated.npy").write_bytes((d / "good.npy").read_bytes()[:300])
    (d / "truncated.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    mixed = d / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    np.save(mixed / "b.npy", rng.integers(0, 256, (2, 3, 48, 48), dtype=np.uint8))
    rewrite_metadata(model, d / "nan_noise.safetensors", lambda m: set_in(m, "sampling.noise_level", float("nan")))
    rewrite_metadata(model, d / "huge.safetensors", lambda m: set_in(m, "unet_config.num_res_blocks", 20000))
    rewrite_metadata(model, d / "list_meta.safetensors", lambda m: [1, 2, 3])
    rewrite_metadata(model, d / "string_meta.safetensors", lambda m: json.dumps("model"))
    rewrite_metadata(model, d / "bad_size.safetensors", lambda m: set_in(m, "image_size", "abc"))
    rewrite_metadata(model, d / "no_vocab.safetensors", lambda m: {k: v for k, v in m.items() if k != "vocabulary"})
    torch.save({"model": {"x": torch.zeros(1)}, "args": datetime.date(2020, 1, 1)}, d / "hostile.pth")  # not allow-listed
    (d / "garbage.pth").write_bytes(b"\x80\x04not a pickle at all")
    (d / "a_file").write_text("x")
    return {p.name: p for p in d.iterdir()} | {"dir": d}


def gen(inputs, *extra, controls="good.npy"):
    base = ["generate", "--model", str(inputs["tiny.safetensors"]), "--steps", "1", "--quiet"]
    if controls:
        base += ["--controls", str(inputs[controls])]
    return [*base, *extra]


def out_in(tmp: Path) -> list[str]:
    return ["--out", str(tmp / "out.tif")]


# (case id, argv builder(inputs, tmp) -> list, text the message must contain)
CASES = [
    ("guidance-nan", lambda i, t: gen(i, "--guidance", "nan", *out_in(t)), "guidance"),
    ("noise-nan", lambda i, t: gen(i, "--noise-level", "nan", *out_in(t)), "noise_level"),
    ("guidance-inf", lambda i, t: gen(i, "--guidance", "inf", *out_in(t)), "guidance"),
    ("steps-zero", lambda i, t: gen(i, "--steps", "0", *out_in(t)), "steps"),
    ("n-cells-negative", lambda i, t: gen(i, "--n-cells", "-1", *out_in(t)), "--n-cells"),
    ("n-cells-zero", lambda i, t: gen(i, "--n-cells", "0", *out_in(t)), "--n-cells"),
    ("batch-size-zero", lambda i, t: gen(i, "--batch-size", "0", *out_in(t)), "batch"),
    ("floats-0-to-1", lambda i, t: gen(i, *out_in(t), controls="floats01.npy"), "0..1"),
    ("nan-pixels", lambda i, t: gen(i, *out_in(t), controls="nan.npy"), "NaN"),
    ("zero-cells", lambda i, t: gen(i, *out_in(t), controls="empty.npy"), "no cells"),
    ("object-npy", lambda i, t: gen(i, *out_in(t), controls="object.npy"), "object.npy"),
    ("truncated-npy", lambda i, t: gen(i, *out_in(t), controls="truncated.npy"), "truncated.npy"),
    ("truncated-tif", lambda i, t: gen(i, *out_in(t), controls="truncated.tif"), "truncated.tif"),
    ("mixed-crop-sizes", lambda i, t: gen(i, *out_in(t), controls="mixed"), "48 x 48"),
    ("missing-controls", lambda i, t: gen(i, "--controls", str(t / "nope.npy"), *out_in(t), controls=None), "nope.npy"),
    ("device-tpu", lambda i, t: gen(i, "--device", "tpu", *out_in(t)), "tpu"),
    ("device-cuda-bad-index", lambda i, t: gen(i, "--device", "cuda:x", *out_in(t)), "cuda:x"),
    ("out-is-a-folder", lambda i, t: gen(i, "--out", str(t)), "folder"),
    ("out-parent-is-a-file", lambda i, t: gen(i, "--out", str(i["a_file"]) + "/x.tif"), "a_file"),
    ("out-no-suffix", lambda i, t: gen(i, "--out", str(t / "result")), ".tif"),
    ("model-noise-nan", lambda i, t: ["generate", "--model", str(i["nan_noise.safetensors"]), *out_in(t)], "noise_level"),
    ("model-huge-config", lambda i, t: ["info", str(i["huge.safetensors"])], "num_res_blocks"),
    ("model-meta-list", lambda i, t: ["info", str(i["list_meta.safetensors"])], "list_meta.safetensors"),
    ("model-meta-string", lambda i, t: ["info", str(i["string_meta.safetensors"])], "string_meta.safetensors"),
    ("model-image-size-abc", lambda i, t: ["info", str(i["bad_size.safetensors"])], "image_size"),
    ("model-no-vocabulary", lambda i, t: ["info", str(i["no_vocab.safetensors"])], "vocabulary"),
    ("hostile-pth", lambda i, t: ["info", str(i["hostile.pth"])], "hostile.pth"),
    ("garbage-pth", lambda i, t: ["info", str(i["garbage.pth"])], "garbage.pth"),
    ("unknown-perturbation", lambda i, t: gen(i, "--perturbation", "taxoll", *out_in(t)), "taxoll"),
    ("bad-smiles", lambda i, t: gen(i, "--smiles", "C1CC(", *out_in(t)), "C1CC("),
    ("screen-manifest-list", lambda i, t: screen_into(i, t, manifest=[1, 2]), "manifest.json"),
    ("screen-n-cells-zero", lambda i, t: ["screen", "--model", str(i["tiny.safetensors"]), "--n-cells", "0",
                                          "--out", str(t / "s")], "--n-cells"),
    ("extract-prefix-escapes", lambda i, t: extract(i, t, "--prefix", "../../escape"), "--prefix"),
    ("extract-nan-field", lambda i, t: extract(i, t, field=np.full((3, 64, 64), np.nan, dtype=np.float32)), "NaN"),
    ("extract-truncated-field", lambda i, t: ["extract", str(i["truncated.tif"]), "--out", str(t / "crops"),
                                              "--perturbation", "DMSO", "--batch", "b1"], "truncated.tif"),
    ("extract-corrupt-cells-csv", lambda i, t: extract_into_corrupt_table(i, t), "cells.csv"),
]


def screen_into(inputs, tmp: Path, manifest) -> list[str]:
    folder = tmp / "screen"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return ["screen", "--model", str(inputs["tiny.safetensors"]), "--controls", str(inputs["good.npy"]),
            "--n-cells", "4", "--steps", "1", "--quiet", "--out", str(folder)]


def extract(inputs, tmp: Path, *extra, field=None) -> list[str]:
    import tifffile

    path = tmp / "field.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64), dtype=np.uint16) if field is None else field)
    return [str(a) for a in ("extract", path, "--out", tmp / "crops", "--perturbation", "DMSO", "--batch", "b1", *extra)]


def extract_into_corrupt_table(inputs, tmp: Path) -> list[str]:
    """A real field (nuclei to cut) into a folder whose cells.csv is damaged: no orphan crop may appear."""
    import tifffile

    from napari_cellflux.data.synthetic_field import make_synthetic_field

    field = make_synthetic_field((192, 192), n_cells=6, cell_size=32, seed=1)
    tifffile.imwrite(tmp / "field.tif", field.image)
    (tmp / "crops").mkdir()
    (tmp / "crops" / "cells.csv").write_bytes(b"\xff\xfe\x00garbage")
    return ["extract", str(tmp / "field.tif"), "--out", str(tmp / "crops"), "--perturbation", "DMSO", "--batch", "b1",
            "--crop-size", "32", "--min-area", "10"]


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, argv, expected, inputs, tmp_path, capsys):
    args = argv(inputs, tmp_path)
    before_inputs, before_tmp = snapshot(inputs["dir"]), snapshot(tmp_path)
    try:
        code = main(args)
    except SystemExit as exit:  # argparse refuses an option's value before main's body runs
        code = exit.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, f"{case}: exit {code}, stderr {captured.err!r}"
    assert len(lines) == 1 and lines[0].startswith(f"cellflux {args[0]}: error: "), captured.err
    assert expected in lines[0], f"{case}: {lines[0]!r} does not name {expected!r}"
    assert "Traceback" not in captured.err and "allow_pickle" not in captured.err and "weights_only" not in captured.err
    assert snapshot(inputs["dir"]) == before_inputs, f"{case} changed an input"
    assert snapshot(tmp_path) == before_tmp, f"{case} wrote {sorted(set(snapshot(tmp_path)) - set(before_tmp))}"


def test_one_cell_without_controls_is_fine(inputs, tmp_path):
    assert main(["generate", "--model", str(inputs["tiny.safetensors"]), "--n-cells", "1", "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "one.tif")]) == 0
    assert (tmp_path / "one.tif").is_file()


def test_api_raises_the_package_error_types(inputs):
    model = api.load_model(inputs["tiny.safetensors"], device="cpu")
    with pytest.raises(InputError, match="guidance"):
        api.SamplingConfig(guidance=float("nan"))
    with pytest.raises(InputError, match="0..1"):
        crops_from_file(inputs["floats01.npy"], model)
    with pytest.raises(InputError, match="model works in"):
        api.check_controls(model, torch.full((2, 3, 32, 32), 2.0))
    with pytest.raises(CellFluxError, match="taxoll"):
        api.generate(model, torch.zeros(1, 3, 32, 32), "taxoll")
    with pytest.raises(InputError, match="num_res_blocks"):
        api.load_model(inputs["huge.safetensors"], device="cpu")


@pytest.mark.parametrize(
    "error,text",
    [
        (OSError(28, "No space left on device", "/data/out.tif"), "disk is full"),
        (OSError(30, "Read-only file system", "/ro/out.tif"), "read-only"),
        (PermissionError(13, "Permission denied", "/root/x"), "permission"),
        (ValueError("Object arrays cannot be loaded when allow_pickle=False"), "never loaded"),
        (RuntimeError("re-running with weights_only=False will likely succeed"), None),
        (KeyError("unknown thing 'x'"), "unknown thing 'x'"),
    ],
)
def test_reporter_gives_the_fix_and_never_an_unsafe_hint(error, text):
    line = describe(error)
    if text is None:
        assert line is None  # not a user's error: a bug keeps its traceback
    else:
        assert text in line and "allow_pickle" not in line and not line.startswith('"')


def test_a_full_disk_during_export_is_one_line_and_leaves_no_partial_file(inputs, tmp_path, capsys, monkeypatch):
    import errno

    import tifffile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    code = main(gen(inputs, "--out", str(tmp_path / "out.tif")))
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]  # after the run's warnings
    assert code == 2 and len(err) == 1 and "disk is full" in err[0], err
    assert list(tmp_path.iterdir()) == []  # neither out.tif nor its temporary .part file


def test_a_missing_codec_is_named_not_blamed_on_the_file(tmp_path):
    """JUMP's fields are LZW TIFFs: without imagecodecs tifffile cannot decode them, and the line
    must say to install it, not that the file may be truncated. Run where imagecodecs cannot be
    imported (a fresh process, since tifffile keeps the codecs it found)."""
    import subprocess
    import sys

    import tifffile

    field = tmp_path / "field.tif"
    tifffile.imwrite(field, np.zeros((3, 64, 64), dtype=np.uint16), compression="lzw")
    script = ("import sys; sys.modules['imagecodecs'] = None; from napari_cellflux.cli import main; "
              f"sys.exit(main(['extract', {str(field)!r}, '--out', {str(tmp_path / 'crops')!r}, "
              "'--perturbation', 'DMSO', '--batch', 'b1']))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "compressed with LZW" in lines[0] and "pip install imagecodecs" in lines[0], lines[0]
    assert "truncated" not in lines[0]
    assert not (tmp_path / "crops").exists()
