"""``python -m napari_cellflux.cli``: the same as the ``cellflux`` command."""

import sys

from napari_cellflux.cli import main

sys.exit(main())
