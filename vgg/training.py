"""Moved: the trainer's pieces now live in vgg.engine (train_step, validate, precision_setup,
prepare_model, configure_backends), vgg.optim (build_optimizer, LRSchedule) and vgg.run_log
(MetricsLog). This module only re-exports them for the importers not yet switched
(vgg/plot.py, benchmarks/steps.py, benchmarks/cifar_speed.py, benchmarks/distributed_smoke.py,
tests/test_plot.py, tests/test_train_throughput.py); delete it once none is left."""

from vgg.engine import configure_backends, precision_setup, prepare_model, train_step
from vgg.engine import validate as evaluate
from vgg.optim import LRSchedule, build_optimizer
from vgg.run_log import MetricsLog

__all__ = ["LRSchedule", "MetricsLog", "build_optimizer", "configure_backends", "evaluate",
           "precision_setup", "prepare_model", "train_step"]
