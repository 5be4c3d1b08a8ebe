"""Suite-wide settings: offline hub, one torch thread (the 2-core CI machine is shared by the test
process and its subprocesses; more threads oversubscribe it and slow tiny models down 10x)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
