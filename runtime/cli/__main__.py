"""`python -m gte_onnx.cli VERB ...`, the same as `gte-onnx VERB ...`."""

import sys

from gte_onnx.cli import main

sys.exit(main())
