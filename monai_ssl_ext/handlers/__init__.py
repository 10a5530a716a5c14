from .checkpoint import ResumableCheckpoint, RNGState
from .ema import EMATargetUpdate, cosine_momentum
from .encoder_export import EncoderExport
from .nan_guard import NaNGuard, NonFiniteLossError
from .tracking import TrackParams, flatten_params
from .progress import RunProgress
from .embeddings import EmbeddingWriter
from .overlay import OverlayWriter, require_checkpoint
from .grad_clip import GradientClip
from .ssl_state import FeatureQueue, KMeansState, MemoryBank
from .evaluation import BestCheckpointLoader, ClassificationReport, stack_from_engine
from .run_signature import RunSignature
from .knn_monitor import KNNMonitor
from .classification import ClassPredictionWriter, ConfusionMatrixWriter, key_metric_value
from .depth import DepthMapWriter
from .clustering import ClusterMemory, FreezePrototypes, QueueStart
from .embeddings import embedding_items
from .contours import ContourOverlayWriter, mask_contour
from .overlay import inference_items
from .trunks_export import TrunksExport
