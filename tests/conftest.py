import os

os.environ.setdefault("XMODAL_PROGRESS", "0")

import torch  # noqa: E402

torch.set_flush_denormal(True)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: two workers on two cores, no oversubscription
    torch.set_num_threads(1)
