"""Virtual screens (issue 8): chunks streamed to disk, resumed without redoing finished chunks,
split across ranks, identical to an uninterrupted single-process run; manifest checks; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from plugin_helpers import TWO_STEPS, random_pool, tiny_model, tiny_model_file

from napari_cellflux.cli import main
from napari_cellflux.generation import screen as S
from napari_cellflux.generation import screen_files as F
from napari_cellflux.generation.screen_plan import rank_units
from napari_cellflux.settings import SpeedOptions

N_CELLS, CHUNK = 20, 8  # chunks of 8, 8 and 4 cells


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7)


@pytest.fixture(scope="module")
def pool():
    return random_pool()


def screen(model, pool, out, **options):
    return S.run_screen(model, pool, out, n_cells=N_CELLS, chunk_size=CHUNK, perturbation="colchicine",
                        sampling=TWO_STEPS, seed=3, **options, speed=SpeedOptions(precision="fp32"))


@pytest.fixture(scope="module")
def full(model, pool, tmp_path_factory):
    """An uninterrupted single-process screen: the reference of the other tests."""
    out = tmp_path_factory.mktemp("full")
    report = screen(model, pool, out)
    return out, report


def cells(out, name="colchicine") -> np.ndarray:
    return np.concatenate([c for _, c in F.read_screen(out)[name].chunks()])


def test_screen_writes_chunks_and_manifest(full, pool):
    out, report = full
    assert report.written == [("colchicine", i) for i in range(3)] and not report.skipped and report.complete
    saved = F.read_screen(out)
    assert saved.complete and saved.n_chunks == 3 and saved.perturbations == ["colchicine"]
    part = saved["colchicine"]
    assert [part.chunk(i).shape for i in range(3)] == [(8, 3, 32, 32), (8, 3, 32, 32), (4, 3, 32, 32)]
    assert part.chunk(0).dtype == np.uint8 and part.chunk_path(0) == out / "0000_colchicine" / "chunk_000000.npy"
    m = saved.manifest
    assert m["n_cells"] == N_CELLS and m["chunk_size"] == CHUNK and m["seed"] == 3
    assert m["perturbations"] == [{"name": "colchicine", "condition": "vocabulary", "folder": "0000_colchicine",
                                   "is_control": False}]
    assert m["sampling"] == TWO_STEPS.to_dict()
    assert m["controls"] == {"n": 5, "sha256": S.pool_sha256(pool)}
    assert not list(out.rglob(".*.part"))
    # the cells really moved away from their controls
    start = pool[part.control_indices(2)].astype(float)
    assert np.abs(part.chunk(2).astype(float) - start).mean() > 1


def test_interrupted_screen_resumes_without_redoing_chunks(full, model, pool, tmp_path):
    first = screen(model, pool, tmp_path, max_chunks=1)
    assert first.written == [("colchicine", 0)] and first.remaining == [("colchicine", 1), ("colchicine", 2)]
    folder = tmp_path / "0000_colchicine"
    done = (folder / F.chunk_name(0)).stat().st_mtime_ns

    calls = []
    cancel_after = lambda: calls.append(1) or len(calls) > 2  # cancels inside the second chunk
    second = screen(model, pool, tmp_path, cancel=cancel_after)
    assert second.cancelled and second.skipped == [("colchicine", 0)] and second.written == []
    assert second.remaining == [("colchicine", 1), ("colchicine", 2)]
    assert not (folder / F.chunk_name(1)).exists() and not list(tmp_path.rglob(".*.part"))

    third = screen(model, pool, tmp_path)
    assert third.skipped == [("colchicine", 0)] and third.written == [("colchicine", 1), ("colchicine", 2)]
    assert third.complete and (folder / F.chunk_name(0)).stat().st_mtime_ns == done  # not rewritten
    assert np.array_equal(cells(tmp_path), cells(full[0]))


def test_deleted_chunk_is_remade_identically(full, model, pool, tmp_path):
    screen(model, pool, tmp_path)
    folder = tmp_path / "0000_colchicine"
    (folder / F.chunk_name(1)).unlink()
    (folder / f".{F.chunk_name(1)}.deadbeef.part").write_bytes(b"half a chunk")  # a killed writer's leftover
    report = screen(model, pool, tmp_path)
    assert report.written == [("colchicine", 1)] and report.skipped == [("colchicine", 0), ("colchicine", 2)]
    assert not list(tmp_path.rglob(".*.part"))
    assert np.array_equal(cells(tmp_path), cells(full[0]))


def test_two_ranks_make_disjoint_chunks_that_equal_one_process(full, model, pool, tmp_path, monkeypatch):
    reports = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        reports.append(screen(model, pool, tmp_path))
    assert reports[0].written == [("colchicine", 0), ("colchicine", 2)] and reports[1].written == [("colchicine", 1)]
    assert F.read_screen(tmp_path).complete
    assert np.array_equal(cells(tmp_path), cells(full[0]))


def test_manifest_mismatch_is_a_clear_error(full, model, pool):
    out = full[0]
    with pytest.raises(ValueError, match=r"different virtual screen \(seed: on disk 3, now 4"):
        S.run_screen(model, pool, out, n_cells=N_CELLS, chunk_size=CHUNK, perturbation="colchicine",
                     sampling=TWO_STEPS, seed=4, speed=SpeedOptions(precision="fp32"))
    with pytest.raises(ValueError, match="chunk_size"):
        S.run_screen(model, pool, out, n_cells=N_CELLS, chunk_size=4, perturbation="colchicine",
                     sampling=TWO_STEPS, seed=3, speed=SpeedOptions(precision="fp32"))
    with pytest.raises(ValueError, match="controls"):
        screen(model, pool[:4], out)


def test_chunk_draws_depend_only_on_seed_and_index():
    a = F.chunk_control_indices(1, 5, 10, 7)
    assert np.array_equal(a, F.chunk_control_indices(1, 5, 10, 7))
    assert not np.array_equal(a, F.chunk_control_indices(1, 6, 10, 7))
    assert F.chunk_seed(1, 5) != F.chunk_seed(1, 6) and F.chunk_seed(1, 5) == F.chunk_seed(1, 5)
    assert rank_units(1, 7, 1, 3) == [(0, 1), (0, 4)]
    assert rank_units(2, 3, 1, 2) == [(0, 1), (1, 0), (1, 2)]  # units 1, 3, 5 of p * 3 + chunk
    assert F.chunk_count(20, 8) == 3 and F.chunk_size_of(2, 20, 8) == 4


def test_screen_memory_is_one_chunk(model, pool, tmp_path, monkeypatch):
    """generate() is asked for one chunk of final states at a time, never for the whole screen."""
    seen = []
    real = S.generate

    def spy(model, controls, *args, **kwargs):
        seen.append((len(controls), kwargs["final_only"]))
        return real(model, controls, *args, **kwargs)

    monkeypatch.setattr(S, "generate", spy)
    S.run_screen(model, pool, tmp_path, n_cells=12, chunk_size=4, perturbation="colchicine",
                 sampling=TWO_STEPS, speed=SpeedOptions(precision="fp32"))
    assert seen == [(4, True)] * 3


def test_cli_screen_all_states(tmp_path, capsys):
    model_file = tiny_model_file(tmp_path / "tiny.safetensors")
    crops = tmp_path / "controls.npy"
    np.save(crops, np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    args = ["screen", "--model", str(model_file), "--controls", str(crops), "--perturbation", "PP-2",
            "--n-cells", "6", "--chunk-size", "4", "--out", str(tmp_path / "s"), "--solver", "euler",
            "--grid", "uniform", "--steps", "2", "--device", "cpu", "--precision", "fp32", "--all-states", "--quiet"]
    assert main(args + ["--max-chunks", "1"]) == 0
    assert "1 left to make" in capsys.readouterr().out
    assert main(args) == 0
    assert "1 already on disk" in capsys.readouterr().out
    saved = F.read_screen(tmp_path / "s")
    assert saved.complete and saved["PP-2"].chunk(1).shape == (2, 3, 3, 32, 32)  # (n, T, C, H, W)
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["states"] == "all"
    assert main(args[:-1] + ["--seed", "9"]) == 2  # a different screen in the same folder
    assert "different virtual screen" in capsys.readouterr().err
