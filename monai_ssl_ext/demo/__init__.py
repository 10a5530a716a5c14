"""Small synthetic datasets in the real layouts of the recipes, deterministic by seed: one
module per dataset layout. ``scripts/make_demo_data.py`` is the command line over them.

* :func:`cholec` (:mod:`.cholec`) -- Cholec80 videos + phase annotations, extracted frames, CSVs;
* :func:`tools` (:mod:`.tools`) -- tool-segmentation images, masks and ``datalist.json``;
* :func:`acdc` (:mod:`.acdc`) -- ACDC cine MRI (raw release layout) + ``acdc_slices.json``;
* :func:`btcv` (:mod:`.btcv`) -- BTCV abdominal CT in the unetr_btcv datalists' MSD layout;
* :func:`tcia` (:mod:`.tcia`) -- TCIA-COVID19 chest CT for vitautoenc_ct;
* :func:`hyperkvasir` (:mod:`.hyperkvasir`) -- Hyperkvasir unlabelled + labelled GI pictures (SSL4GIE).

The package attributes ``cholec``, ``tools``, ... are the generator functions; the modules are
``monai_ssl_ext.demo.<name>`` in ``sys.modules`` (``from monai_ssl_ext.demo.cholec import write_video``).
"""

from .acdc import ACDC_GROUPS, acdc
from .btcv import BTCV_DATALISTS, BTCV_ORGANS, btcv
from .cholec import PHASE_TINTS, VIDEO_CODECS, cholec, write_video
from .hyperkvasir import HYPERKVASIR_CLASSES, hyperkvasir
from .tcia import tcia
from .tools import tools

#: sub-command name -> generator (the CLI of scripts/make_demo_data.py)
GENERATORS = {"cholec": cholec, "tools": tools, "acdc": acdc, "btcv": btcv, "tcia": tcia, "hyperkvasir": hyperkvasir}

__all__ = ["ACDC_GROUPS", "BTCV_DATALISTS", "BTCV_ORGANS", "GENERATORS", "HYPERKVASIR_CLASSES", "PHASE_TINTS",
           "VIDEO_CODECS", "acdc", "btcv", "cholec", "hyperkvasir", "tcia", "tools", "write_video"]
