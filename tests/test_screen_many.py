"""Screens of many perturbations (issue 15): names, the whole vocabulary or a SMILES CSV in one
folder, resumed and sharded by (perturbation, chunk) unit with the same files as one uninterrupted
process; unknown names all reported at once; a changed list refused; format-1 screens still read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from plugin_helpers import COMPOUNDS, TWO_STEPS, random_pool, tiny_model, tiny_model_file

from napari_cellflux.cli import main
from napari_cellflux.errors import InputError
from napari_cellflux.generation import screen as S
from napari_cellflux.generation.screen_files import MANIFEST, read_screen
from napari_cellflux.generation.screen_plan import plan_screen, read_smiles_csv
from napari_cellflux.settings import SpeedOptions

N_CELLS, CHUNK = 10, 4  # chunks of 4, 4 and 2 cells per perturbation
TWO = ["colchicine", "PP-2"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7)


@pytest.fixture(scope="module")
def pool():
    return random_pool()


def screen(model, pool, out, perturbation=TWO, **options):
    return S.run_screen(model, pool, out, n_cells=N_CELLS, chunk_size=CHUNK, perturbation=perturbation,
                        sampling=TWO_STEPS, seed=3, speed=SpeedOptions(precision="fp32"), **options)


def files(out) -> dict[str, bytes]:
    """Every chunk file of a screen folder, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("chunk_*.npy"))}


@pytest.fixture(scope="module")
def full(model, pool, tmp_path_factory):
    """An uninterrupted single-process screen of two perturbations: the reference."""
    out = tmp_path_factory.mktemp("full")
    return out, screen(model, pool, out)


def test_several_perturbations_share_one_folder_and_manifest(full, model, pool, tmp_path):
    out, report = full
    assert report.perturbations == TWO and report.n_units == 6 and report.complete
    assert report.written == [(p, i) for p in TWO for i in range(3)]
    saved = read_screen(out)
    assert saved.perturbations == TWO and saved.complete and len(saved) == 2
    assert [e["folder"] for e in saved.manifest["perturbations"]] == ["0000_colchicine", "0001_PP-2"]
    a, b = saved["colchicine"], saved["pp-2"]  # names are case-insensitive
    assert [c.shape for _, c in a.chunks()] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    # the same control rows and noise for both perturbations: they differ by their condition only
    assert np.array_equal(a.control_indices(1), b.control_indices(1))
    assert not np.array_equal(a.chunk(0), b.chunk(0))
    # a perturbation's chunks do not depend on the others in the list
    alone = screen(model, pool, tmp_path, perturbation="PP-2")
    assert alone.written == [("PP-2", i) for i in range(3)]
    assert all(np.array_equal(read_screen(tmp_path)["PP-2"].chunk(i), b.chunk(i)) for i in range(3))
    with pytest.raises(KeyError, match="no perturbation 'taxol'"):
        saved["taxol"]


def test_resume_after_interruption_across_perturbations_gives_identical_files(full, model, pool, tmp_path):
    first = screen(model, pool, tmp_path, max_chunks=4)  # stops inside the second perturbation
    assert first.written == [("colchicine", 0), ("colchicine", 1), ("colchicine", 2), ("PP-2", 0)]
    assert first.remaining == [("PP-2", 1), ("PP-2", 2)]
    calls = []
    second = screen(model, pool, tmp_path, cancel=lambda: calls.append(1) or len(calls) > 2)
    assert second.cancelled and len(second.skipped) == 4 and not second.written
    (tmp_path / "0001_PP-2" / ".chunk_000001.npy.dead.part").write_bytes(b"half")  # a killed writer's leftover
    third = screen(model, pool, tmp_path)
    assert third.written == [("PP-2", 1), ("PP-2", 2)] and third.complete
    assert not list(tmp_path.rglob("*.part"))
    assert files(tmp_path) == files(full[0])


def test_two_ranks_split_the_units_and_only_rank_0_writes_the_manifest(full, model, pool, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="rank 1: rank 0 has not written"):
        screen(model, pool, tmp_path, rank=1, world_size=2, manifest_wait_s=0)
    assert not list(tmp_path.iterdir())
    reports = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        reports.append(screen(model, pool, tmp_path))
    # units u = p * 3 + chunk: rank 0 makes 0, 2, 4 and rank 1 makes 1, 3, 5
    assert reports[0].written == [("colchicine", 0), ("colchicine", 2), ("PP-2", 1)]
    assert reports[1].written == [("colchicine", 1), ("PP-2", 0), ("PP-2", 2)]
    assert files(tmp_path) == files(full[0])


def test_whole_vocabulary_on_the_cli(tmp_path, capsys):
    model_file = tiny_model_file(tmp_path / "tiny.safetensors")
    out = tmp_path / "all"
    args = ["screen", "--model", str(model_file), "--all-perturbations", "--n-cells", "3", "--chunk-size", "2",
            "--out", str(out), "--solver", "euler", "--grid", "uniform", "--steps", "1", "--device", "cpu",
            "--precision", "fp32", "--quiet"]
    assert main(args) == 0
    assert "(of 6 chunks: 3 perturbation(s) x 2" in capsys.readouterr().out
    saved = read_screen(out)
    assert saved.perturbations == ["colchicine", "PP-2", "DMSO"] and saved.complete
    assert [e["is_control"] for e in saved.manifest["perturbations"]] == [False, False, True]
    assert main(args[:3] + ["--perturbation", "colchicine", "PP-2"] + args[4:]) == 2  # another list, same folder
    err = capsys.readouterr().err
    assert "other perturbations" in err and 'dropped ["DMSO"]' in err


def test_smiles_csv_screens_unseen_compounds(model, pool, tmp_path, capsys):
    table = tmp_path / "new.csv"
    table.write_text(f"Name,SMILES,note\ncolchicine_again,{COMPOUNDS['colchicine']},same molecule\n"
                     "ethanol,CCO,small\n")
    smiles = read_smiles_csv(table)
    assert smiles == {"colchicine_again": COMPOUNDS["colchicine"], "ethanol": "CCO"}
    report = S.run_screen(model, pool, tmp_path / "s", n_cells=4, chunk_size=4, perturbation="colchicine",
                          smiles=smiles, sampling=TWO_STEPS, seed=3, speed=SpeedOptions(precision="fp32"))
    assert report.perturbations == ["colchicine", "colchicine_again", "ethanol"]
    saved = read_screen(tmp_path / "s")
    entry = saved.manifest["perturbations"][2]
    assert entry == {"name": "ethanol", "condition": "smiles", "smiles": "CCO", "folder": "0002_ethanol", "is_control": False}
    # the tiny model's embedding of colchicine is the fingerprint of its SMILES: the same cells
    assert np.array_equal(saved["colchicine_again"].chunk(0), saved["colchicine"].chunk(0))
    assert not np.array_equal(saved["ethanol"].chunk(0), saved["colchicine"].chunk(0))
    # the CLI reads the same table; a bad SMILES is one line naming the row, before anything is written
    cli = ["screen", "--model", str(tiny_model_file(tmp_path / "tiny.safetensors")), "--n-cells", "2", "--steps", "1",
           "--solver", "euler", "--device", "cpu", "--quiet", "--smiles-csv", str(table), "--out", str(tmp_path / "c")]
    assert main(cli) == 0 and read_screen(tmp_path / "c").perturbations == ["colchicine_again", "ethanol"]
    table.write_text("name,smiles\nok,CCO\nbroken,C1CC(\n")
    capsys.readouterr()
    assert main(cli[:-1] + [str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 3 ('C1CC(')" in err[0] and not (tmp_path / "d").exists()


def test_unknown_perturbations_are_reported_at_once_with_the_closest_names(model, pool, tmp_path, capsys):
    with pytest.raises(InputError) as err:
        plan_screen(model, ["colchicin", "PP-2", "pp2x", "zzzzzz"])
    message = str(err.value)
    assert "'colchicin' (closest: colchicine)" in message and "'pp2x' (closest: PP-2)" in message
    assert "'zzzzzz' (nothing close)" in message and "'PP-2'" not in message and "\n" not in message
    model_file = tiny_model_file(tmp_path / "tiny.safetensors")
    out = tmp_path / "s"
    code = main(["screen", "--model", str(model_file), "--perturbation", "colchicin", "--perturbation", "taxol",
                 "--n-cells", "2", "--out", str(out), "--steps", "1", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "'colchicin'" in lines[0] and "'taxol'" in lines[0]
    assert not out.exists()


def test_bad_lists_and_smiles_tables_name_the_fix(model, tmp_path):
    with pytest.raises(InputError, match="listed more than once"):
        plan_screen(model, ["colchicine", "COLCHICINE"])
    with pytest.raises(InputError, match="not both"):
        plan_screen(model, ["colchicine"], all_perturbations=True)
    with pytest.raises(InputError, match=r"SMILES of 'bad' could not be parsed"):
        plan_screen(model, smiles={"bad": "C1CC("})
    cases = {
        "compound,smi\na,CCO\n": r"no column name or smiles; expected the columns name and smiles .*got 'compound', 'smi'",
        "name,smiles\na,CCO\nb,C1CC(\nc,CC\nd,xyz\n": r"SMILES on line 3 \('C1CC\('\), 5 \('xyz'\) could not be parsed",
        "name,smiles\na,CCO\n,CC\n": "line 3 has an empty name or smiles",
        "name,smiles\na,CCO\nA,CC\n": r"'a' \(lines 2, 3\) appear more than once",
        "name,smiles\n": "has no rows",
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"t{i}.csv"
        path.write_text(text)
        with pytest.raises(InputError, match=expected):
            read_smiles_csv(path)


def test_a_format_1_screen_is_still_read(full, model, pool, tmp_path):
    """The layout before multi-perturbation screens: one perturbation, chunks beside the manifest."""
    source = read_screen(full[0])
    manifest = {k: v for k, v in source.manifest.items() if k not in ("perturbations", "n_perturbations")}
    manifest |= {"format_version": 1, "condition": {"perturbation": "colchicine", "condition": "vocabulary"}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    for index, cells in source["colchicine"].chunks():
        np.save(tmp_path / f"chunk_{index:06d}.npy", cells)
    old = read_screen(tmp_path)
    assert old.perturbations == ["colchicine"] and old.complete
    assert all(np.array_equal(old["colchicine"].chunk(i), source["colchicine"].chunk(i)) for i in range(3))
    with pytest.raises(InputError, match="earlier napari-cellflux .format 1.*another --out"):
        screen(model, pool, tmp_path, perturbation="colchicine")


def test_a_manifest_pointing_outside_the_screen_is_refused(full, tmp_path):
    manifest = json.loads((full[0] / MANIFEST).read_text())
    manifest["perturbations"][0]["folder"] = "../elsewhere"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="plain folder names"):
        read_screen(tmp_path)


@pytest.mark.slow
def test_kill_9_mid_screen_then_resume_gives_the_files_of_an_uninterrupted_run(tmp_path):
    """A real SIGKILL of `cellflux screen` over two perturbations, then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model_file = tiny_model_file(tmp_path / "tiny.safetensors")
    pool = tmp_path / "pool.npy"
    np.save(pool, np.random.default_rng(2).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))

    def command(out):
        return [sys.executable, "-m", "napari_cellflux.cli", "screen", "--model", str(model_file), "--controls", str(pool),
                "--perturbation", "colchicine", "PP-2", "--n-cells", "24", "--chunk-size", "2", "--out", str(out),
                "--solver", "euler", "--grid", "uniform", "--steps", "8", "--device", "cpu", "--precision", "fp32",
                "--quiet"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process: the same floats
    subprocess.run(command(tmp_path / "reference"), env=env, check=True, capture_output=True)
    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.rglob("chunk_*.npy")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list(out.rglob("chunk_*.npy")))
    assert 0 < written < 24, f"the kill came too late to interrupt anything ({written} of 24 chunks)"
    subprocess.run(command(out), env=env, check=True, capture_output=True)
    assert files(out) == files(tmp_path / "reference") and len(files(out)) == 24
    assert not list(out.rglob("*.part"))
