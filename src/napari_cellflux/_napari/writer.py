"""napari writer (File > Save Selected Layers…, ``*.cellflux.tif``): a generated trajectory as a
Fiji hyperstack. The generated layers carry their run in ``layer.metadata[LAYER_KEY]``."""

from __future__ import annotations

from napari_cellflux.errors import InputError

LAYER_KEY = "cellflux_result"


def write_trajectory(path: str, layer_data: list[tuple]) -> list[str]:
    """Write the whole trajectory (T, N, C, H, W) behind the given layers; returns [path]."""
    results = {}
    for _, meta, _ in layer_data:
        result = meta.get("metadata", {}).get(LAYER_KEY)
        if result is not None:
            results[id(result)] = result
    if not results:
        raise InputError(
            "none of the layers to save holds a CellFlux result; select the generated layers "
            "(named '<perturbation> [<channel>]') and save again"
        )
    if len(results) > 1:
        raise InputError("the selected layers come from different CellFlux runs; save the layers of one run at a time")
    (result,) = results.values()
    return [str(result.write_tiff(path))]
