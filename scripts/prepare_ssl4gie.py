"""Write the frozen datalists of the SSL4GIE downstream datasets next to the data.

Usage::

    python scripts/prepare_ssl4gie.py <layout> --data_dir D [options]

One command per layout, each a ``monai_ssl_ext.gie.prepare_<layout>`` function (its docstring gives
the layout, the split and the file it writes); ``python scripts/prepare_ssl4gie.py --help`` lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

from monai_ssl_ext import gie  # noqa: E402

COMMANDS = {name[len("prepare_"):]: fn for name, fn in vars(gie).items() if name.startswith("prepare_") and callable(fn)}

if __name__ == "__main__":
    import fire

    fire.Fire(COMMANDS)
