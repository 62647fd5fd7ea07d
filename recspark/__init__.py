"""recspark: raw shop behaviour logs -> personalised top-K recommendations, as Spark jobs."""
import os

# tf.keras must be tf-keras (Keras 2): with Keras 3, Horovod's Keras integration silently does not
# average gradients. Set before anything imports TensorFlow, in every process that may.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
