"""Downloading one zoo file with pooch: into a temporary file that is renamed only once complete and
verified, with a labelled progress bar, a timeout and pooch's own logging silenced. The caller
(:class:`napari_cellflux.models.zoo.Zoo`) words the errors."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

DOWNLOAD_TIMEOUT_S = 60
STALE_TEMP_S = 24 * 3600  # a temp file this old belongs to a download that was killed


def retrieve(url: str, dest: Path, expected: str | None, label: str, progress: bool) -> None:
    """Download ``url`` to ``dest`` unless it is there with the ``expected`` sha256 (None: any file).
    Raises requests' RequestException when the download fails and ValueError on a hash mismatch."""
    import pooch

    _sweep_stale_temps(dest.parent)
    with _quiet_pooch():
        pooch.retrieve(
            url, known_hash=f"sha256:{expected}" if expected else None, fname=dest.name,
            path=dest.parent, downloader=_downloader(label, progress),
        )


def _sweep_stale_temps(directory: Path) -> None:
    # pooch streams into tmp* files beside the target and deletes them on errors; only a killed
    # process leaves one behind. Old ones are removed, fresh ones may belong to a running fetch.
    if not directory.is_dir():
        return
    now = time.time()
    for temp in directory.glob("tmp*"):
        with contextlib.suppress(OSError):
            if now - temp.stat().st_mtime > STALE_TEMP_S:
                temp.unlink()


def _downloader(label: str, progress: bool):
    """A pooch downloader with a labelled tqdm bar, created only when pooch actually downloads."""
    import pooch

    def download(url: str, output_file, pooch_instance) -> None:
        if not progress:
            return pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S)(url, output_file, pooch_instance)
        from tqdm.auto import tqdm

        # total=1 because pooch tests the bar's truthiness, which tqdm refuses for an unknown total;
        # pooch sets the real total from Content-Length.
        bar = tqdm(total=1, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=True)
        try:
            pooch.HTTPDownloader(progressbar=bar, timeout=DOWNLOAD_TIMEOUT_S)(url, output_file, pooch_instance)
        finally:
            bar.close()

    return download


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    # pooch logs every download and suggests pasting hashes into pooch calls; our progress bars
    # and errors say what matters to a napari-cellflux user.
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
