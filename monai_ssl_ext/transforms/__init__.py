from .augment import (IMAGENET_MEAN, IMAGENET_STD, AsymmetricAugment, BYOLAugment, SimCLRAugment, ViewAugment,
                      blur_kernel_size)
from .photometric import FastColorJitter, FastGaussianBlur, gaussian_blur, shift_hue
from .checks import CheckedLoadImage, CheckedLoadImaged, ImageReadError, LoadPictured, PictureChannelsd, source_name
from .validate import CheckInputd, InputCheckError
from .multiview import MultiViewd, view_keys
from .multicrop import MultiCropd
from .slices import LoadSliced, SliceIndexError, read_volume
from .spatial import RandResizedCropd
from .intensity import RandBrightnessContrast, RandBrightnessContrastd, adjust_brightness_contrast
from .augment3d import AsymmetricVolumeAugment, VolumeViewAugment
from .volumes import LoadVolumed, volume_items
from .polyp import BinaryMaskd, ColorJitterBlurd, RandPairedAffined, ResizeToMatchd
from .depth import DepthFormatError, LoadDepthd, SquareResized, read_depth16
from .joint3d import LoadSliceStackd, OneOfDistinctViewsd, RandAnisotropy, read_slice_stack, torchio_default_views
