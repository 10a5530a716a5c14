from .ssl_trainer import SSLEvaluator, SSLTrainer, lower_is_better, val_loss_metric
from .detection import DetectionBatch, DetectionEvaluator, DetectionLoss, DetectionTrainer, DetectionWriter
