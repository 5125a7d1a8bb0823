import os

os.environ.setdefault("XMODAL_PROGRESS", "0")

import torch  # noqa: E402

torch.set_flush_denormal(True)
