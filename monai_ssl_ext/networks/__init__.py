from .families import TrunkFamily, family_of_arch, family_of_module, get_family, list_families, register_family, unregister_family
from .backbones import Backbone, build_backbone, freeze_unused_vit_norms, monai_backbone_names, trunk_family
from .heads import MLPHead
from .ssl import BYOL, SimCLR
from .momentum import MomentumPair
from .downstream import BestCheckpointLoader, ClassificationReport, LinearProbe, RunSignature, encoder_normalization, probe_datalist, stack_from_engine
from .vitae import ViTAutoEncoderSSL
from .unet import BackboneUNet
