"""The ``segmenter`` command group.

Each sub-command lives in its own module and is imported lazily, so ``segmenter --help`` never
imports TensorFlow. User errors (:class:`~segmenter.errors.SegmenterError`) become one line on
stderr and exit code 1; ``-v`` shows the traceback as well.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from segmenter import __version__
from segmenter.errors import SegmenterError

log = logging.getLogger("segmenter")

# name -> (module, attribute, one-line help shown by `segmenter --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "config": ("segmenter.cli.config", "config", "Show or validate a configuration."),
    "sample-data": (
        "segmenter.cli.sample",
        "sample_data",
        "Write the built-in generated sample scenes.",
    ),
    "data": ("segmenter.cli.data", "data", "Load a data source and summarise it."),
    "train": ("segmenter.cli.train", "train", "Train one model per patch width."),
    "predict": ("segmenter.cli.predict", "predict", "Predict water masks for photos."),
    "evaluate": ("segmenter.cli.evaluate", "evaluate", "Score a run on labelled test images."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        return getattr(module, spec[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec[2]) for name, spec in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SegmenterError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                log.exception("traceback (shown because of -v):")
            error = click.ClickException(str(exc))
            error.exit_code = getattr(exc, "exit_code", 1)
            raise error from None
        except MemoryError:
            raise click.ClickException(
                "out of memory: lower batch sizes, patch widths or data.scale"
            ) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:  # a bug, not bad input: still one line unless -v
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {first} (run with -v for the traceback)"
            ) from None


def setup_logging(verbosity: int) -> None:
    """-v: debug and TensorFlow's own logs; -q: warnings only; default: info."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("segmenter")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if verbosity <= 0:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="segmenter")
@click.option("-v", "--verbose", count=True, help="More logging; show tracebacks.")
@click.option("-q", "--quiet", count=True, help="Only warnings and errors.")
@click.option("--backend", type=click.Choice(["tensorflow", "jax", "torch"]), default=None,
              help="Keras backend (default: KERAS_BACKEND, else TensorFlow); docs/gpus.md.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, backend: str | None) -> None:
    """Train and run Keras models that split coastal photos into water and not water.

    Typical use: `segmenter train --config configs/default.yaml --out runs/sample`, then
    `segmenter predict --run runs/sample photos/ --out masks/`.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose > 0
    setup_logging(verbose - quiet)
    if backend is not None:
        choose_backend(backend)


def choose_backend(backend: str) -> None:
    """``--backend``: start Keras on ``backend`` (it reads ``KERAS_BACKEND`` when first imported).

    Raises:
        SegmenterError: Keras already runs on another backend in this process.
    """
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        raise SegmenterError(f"--backend {backend}: Keras has already started on "
                             f"{keras.backend.backend()} in this process")
    os.environ["KERAS_BACKEND"] = backend


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="segmenter")
