"""frbench: evaluation and benchmarking harness for synthetic face-recognition datasets."""

import os as _os

# OpenCV prints its own "[ WARN:…] grfmt_png" / "readHeader" lines for a corrupt image before frbench
# can name the file; frbench reports decode failures itself, so OpenCV's logging stays off unless asked
_os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")

__version__ = "0.1.0"
