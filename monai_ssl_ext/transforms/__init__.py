from .augment import SimCLRAugment
from .checks import EnsureChannelsd, source_name
from .multiview import MultiViewd, view_keys
