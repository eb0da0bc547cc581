"""Progress bars of long API calls (training over chunks of epochs, fits over chunks of trials).

A bar is shown only when stderr is a terminal (tqdm's ``disable=None``) and there is more than
one step; the environment variable ``UNIJAX_PROGRESS=0`` turns bars off everywhere and
``UNIJAX_PROGRESS=1`` on (e.g. in a notebook, where stderr is not a terminal).
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def bar(total: int, desc: str, unit: str) -> tqdm:
    """A tqdm bar of ``total`` steps (a context manager; ``bar.disable`` is True when hidden)."""
    env = os.environ.get("UNIJAX_PROGRESS", "").strip()
    if env == "0" or total <= 1:
        disable = True
    elif env == "1":
        disable = False
    else:
        disable = None  # tqdm: on when stderr is a terminal
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                leave=False, dynamic_ncols=True)
