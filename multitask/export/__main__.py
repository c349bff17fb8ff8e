"""`python -m multitask.export`: export a trained run to ONNX (see `multitask.export.onnx_export`)."""

import sys

from multitask.errors import cli
from multitask.export.onnx_export import main

sys.exit(cli(main))
