"""monai-ssl-ext: self-supervised pretraining components for MONAI bundles.

Importing the package imports every submodule, so that MONAI's ComponentLocator resolves the
classes defined here by their short names in bundle configs (``"$import monai_ssl_ext"``).
"""

__version__ = "0.7.5"

from . import data, distributed, engines, handlers, losses, networks, optimizers, transforms, utils  # noqa: E402
from . import encoders  # noqa: E402
from .encoders import load_encoder  # noqa: E402
from . import metrics  # noqa: E402
from . import overrides  # noqa: E402
from . import gie  # noqa: E402
from . import workflow  # noqa: E402
from . import preview  # noqa: E402
from . import plots  # noqa: E402
from . import mmwhs  # noqa: E402
from . import seeding  # noqa: E402
