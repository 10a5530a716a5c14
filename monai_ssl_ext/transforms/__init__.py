from .augment import SimCLRAugment
from .checks import CheckedLoadImage, CheckedLoadImaged, EnsureChannelsd, ImageReadError, source_name
from .multiview import MultiViewd, view_keys
from .spatial import RandResizedCropd
