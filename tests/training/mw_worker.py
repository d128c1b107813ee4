"""One worker of a local MultiWorkerMirroredStrategy test: `segmenter train` with TF_CONFIG set.

Run by tests/training/test_training_distribute.py as
``python tests/training/mw_worker.py INDEX PORT0 PORT1 CONFIG OUT``.
"""

from __future__ import annotations

import json
import os
import sys

index, port0, port1, config, out = sys.argv[1:6]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"localhost:{port0}", f"localhost:{port1}"]},
    "task": {"type": "worker", "index": int(index)},
})
from segmenter.cli.main import cli  # noqa: E402

cli(["train", "--config", config, "--out", out, "--set", "train.strategy=multiworker"],
    prog_name="segmenter")
