from .families import TrunkFamily, family_of_arch, family_of_module, get_family, list_families, register_family, unregister_family
from .backbones import Backbone, build_backbone, freeze_unused_vit_norms, monai_backbone_names, trunk_family
from .heads import MLPHead
from .ssl import BYOL, SimCLR
from .initialisation import zero_init_residual
from .barlow_twins import BarlowTwins
from .momentum import MomentumPair
from .mocov3 import MoCoV3, freeze_patch_embedding, init_vit_as_mocov3, sincos_position_embedding
from .downstream import LinearProbe, encoder_normalization
# moved to data / handlers; re-exported under the old names that bundle configs use
from ..data import probe_datalist
from ..handlers.evaluation import BestCheckpointLoader, ClassificationReport, stack_from_engine
from ..handlers.run_signature import RunSignature
from .vitae import ViTAutoEncoderSSL
from .mae import MAE, patchify, unpatchify
from .unet import BackboneUNet
from .depth import BackboneDepthNet, DPTDepthHead
from .classification import BackboneClassifier, class_weights
from .detection import ResNetFPNFasterRCNN, ViTDetFasterRCNN, resnet_fpn_backbone
from .deeplabv3plus import DeepLabV3Plus, dilate_last_stage
from .dpt import DPTDecoder, DPTSegmentationHead, ViTDPT, vit_token_maps
from .heads import Prototypes
from .clustering import DeepClusterV2, SwAV
from .joint3d import (JointVolumeEncoder, MaskedSliceEmbedding, MaskedSliceLoss, SliceTransformer, joint_ssl_network,
                      joint_volume_encoder, multiscale_dim, multiscale_features, trainable_parameters)
