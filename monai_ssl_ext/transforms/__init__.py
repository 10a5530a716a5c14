from .augment import BYOLAugment, SimCLRAugment
from .checks import CheckedLoadImage, CheckedLoadImaged, ImageReadError, LoadPictured, source_name
from .validate import CheckInputd, InputCheckError
from .multiview import MultiViewd, view_keys
from .multicrop import MultiCropd
from .slices import LoadSliced, SliceIndexError, read_volume
from .spatial import RandResizedCropd
from .intensity import RandBrightnessContrast, RandBrightnessContrastd, adjust_brightness_contrast
