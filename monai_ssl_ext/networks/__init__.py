from .families import TrunkFamily, family_of_arch, family_of_module, get_family, list_families, register_family, unregister_family
from .backbones import Backbone, build_backbone, freeze_unused_vit_norms, monai_backbone_names, trunk_family
from .heads import MLPHead
from .ssl import BYOL, SimCLR
from .momentum import MomentumPair
from .downstream import LinearProbe, encoder_normalization
# moved to data / handlers; re-exported under the old names that bundle configs use
from ..data import probe_datalist
from ..handlers.evaluation import BestCheckpointLoader, ClassificationReport, stack_from_engine
from ..handlers.run_signature import RunSignature
from .vitae import ViTAutoEncoderSSL
from .unet import BackboneUNet
