from .backbones import Backbone, build_backbone, freeze_unused_vit_norms, monai_backbone_names
from .heads import MLPHead
from .ssl import BYOL, SimCLR
from .downstream import BestCheckpointLoader, ClassificationReport, LinearProbe, RunSignature, encoder_normalization, probe_datalist, stack_from_engine
from .vitae import ViTAutoEncoderSSL
from .unet import BackboneUNet
