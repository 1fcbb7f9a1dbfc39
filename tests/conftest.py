import signal
import sys
from pathlib import Path

import torch

# The scripts live at the repository root and are imported as modules (importing one trains nothing).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The exact tests build thousands of tiny tensors: one thread spares them thread start-up and contention.
torch.set_num_threads(1)

# A test run started in the background of a non-interactive shell (or under nohup) inherits SIGINT ignored, and so
# would every script it starts: the Ctrl-C tests need Python's own handler, here and in those processes.
signal.signal(signal.SIGINT, signal.default_int_handler)
