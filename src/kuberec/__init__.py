"""kuberec: retail recommenders on Kubeflow/Kubernetes, or on one machine.

TF Similarity 0.17 breaks on Keras 3, so the package selects legacy Keras (tf-keras) before anything can import
TensorFlow. Import `kuberec` (or any submodule) first and users never have to set it themselves.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO/WARNING banner drowns the step logs; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
