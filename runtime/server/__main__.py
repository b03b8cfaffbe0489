"""`python -m gte_onnx.server DIR [options]`, the same as `gte-onnx serve DIR [options]`."""

import sys

from .main import main

sys.exit(main(sys.argv[1:]))
