"""Run the ``segmenter`` command in a process where TensorFlow cannot be imported.

``python tests/without_tensorflow.py train ...`` is ``segmenter train ...`` as on a machine set up
for JAX with no TensorFlow installed: any import of ``tensorflow`` fails, as it would there.
Keras itself probes for TensorFlow and takes no for an answer; segmenter must too. The process
exits non-zero if TensorFlow was loaded all the same.
"""

from __future__ import annotations

import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"No module named {name!r} (blocked: a machine without TensorFlow)")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _NoTensorFlow())
    from segmenter.cli.main import cli

    try:
        cli(sys.argv[1:], prog_name="segmenter")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if "tensorflow" in sys.modules:
        print("tensorflow was imported", file=sys.stderr)
        code = 3
    sys.exit(code)
