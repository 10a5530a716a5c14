"""Small synthetic datasets in the real layouts of the recipes, deterministic by seed: one
module per dataset layout. ``scripts/make_demo_data.py`` is the command line over them.

* :func:`cholec` (:mod:`.cholec`) -- Cholec80 videos + phase annotations, extracted frames, CSVs;
* :func:`tools` (:mod:`.tools`) -- tool-segmentation images, masks and ``datalist.json``;
* :func:`acdc` (:mod:`.acdc`) -- ACDC cine MRI (raw release layout) + ``acdc_slices.json``;
* :func:`btcv` (:mod:`.btcv`) -- BTCV abdominal CT in the unetr_btcv datalists' MSD layout;
* :func:`tcia` (:mod:`.tcia`) -- TCIA-COVID19 chest CT for vitautoenc_ct;
* :func:`hyperkvasir` (:mod:`.hyperkvasir`) -- Hyperkvasir unlabelled + labelled GI pictures (SSL4GIE).
* :func:`kvasir_seg`, :func:`cvc_clinicdb` (:mod:`.kvasir`) -- Kvasir-SEG / CVC-ClinicDB polyp images, masks,
  boxes and the frozen 80/10/10 split (SSL4GIE polyp segmentation and detection).
* :func:`c3vd` (:mod:`.c3vd`) -- C3VD colonoscopy frames + 16-bit depth TIFFs and the frozen split of SSL4GIE's
  fixed validation / test videos (SSL4GIE depth estimation).
* :func:`mmwhs` (:mod:`.mmwhs`) -- MMWHS-style whole-heart CT (raw release naming) + the prepared slices and
  ``mmwhs_ct.json`` (unet_mmwhs).
* :func:`ssl_slices` (:mod:`.ssl_slices`) -- the joint 2D-3D SSL recipe's mixed 2D slice layout of four datasets and
  its 3D ``.npy`` layout (``training_data_3D/``).

The package attributes ``cholec``, ``tools``, ... are the generator functions; the modules are
``monai_ssl_ext.demo.<name>`` in ``sys.modules`` (``from monai_ssl_ext.demo.cholec import write_video``).
"""

from .acdc import ACDC_GROUPS, acdc
from .btcv import BTCV_DATALISTS, BTCV_ORGANS, btcv
from .c3vd import c3vd
from .cholec import PHASE_TINTS, VIDEO_CODECS, cholec, write_video
from .hyperkvasir import HYPERKVASIR_CLASSES, hyperkvasir
from .kvasir import cvc_clinicdb, kvasir_seg
from .mmwhs import mmwhs
from .ssl_slices import ssl_slices
from .tcia import tcia
from .tools import tools

#: sub-command name -> generator (the CLI of scripts/make_demo_data.py)
GENERATORS = {"cholec": cholec, "tools": tools, "acdc": acdc, "btcv": btcv, "tcia": tcia, "hyperkvasir": hyperkvasir}
GENERATORS.update(kvasir_seg=kvasir_seg, cvc_clinicdb=cvc_clinicdb)
GENERATORS.update(c3vd=c3vd)
GENERATORS.update(mmwhs=mmwhs, ssl_slices=ssl_slices)

__all__ = ["ACDC_GROUPS", "BTCV_DATALISTS", "BTCV_ORGANS", "GENERATORS", "HYPERKVASIR_CLASSES", "PHASE_TINTS",
           "VIDEO_CODECS", "acdc", "btcv", "cholec", "hyperkvasir", "tcia", "tools", "write_video"]
__all__ += ["cvc_clinicdb", "kvasir_seg"]
__all__ += ["c3vd"]
__all__ += ["mmwhs", "ssl_slices"]
