"""Run the ``segmenter`` command in a process where TensorFlow cannot be imported.

``python tests/without_tensorflow.py train ...`` is ``segmenter train ...`` as on a machine set up
for JAX with no TensorFlow installed: any import of ``tensorflow`` fails, as it would there.
Keras itself probes for TensorFlow and takes no for an answer; segmenter must too. The heavy
libraries of rasters, S3 and clusters (rasterio, shapely, s3fs, dask) are blocked as well: photos
and local folders must not need them. The process exits non-zero if a blocked package was
loaded all the same.
"""

from __future__ import annotations

import importlib.util
import sys

BLOCKED = ("tensorflow", "rasterio", "shapely", "s3fs", "dask", "distributed")


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked: not installed on this machine)")
        return None


def _find_spec(name, package=None, _real=importlib.util.find_spec):
    """``importlib.util.find_spec`` as where the blocked packages are not installed: None."""
    if name.split(".")[0] in BLOCKED:
        return None
    return _real(name, package)


if __name__ == "__main__":
    sys.meta_path.insert(0, _Blocked())
    importlib.util.find_spec = _find_spec
    from segmenter.cli.main import cli

    try:
        cli(sys.argv[1:], prog_name="segmenter")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    if loaded:
        print(f"blocked packages were imported: {', '.join(loaded)}", file=sys.stderr)
        code = 3
    sys.exit(code)
