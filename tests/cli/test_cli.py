"""The command group: instant help, version, logging flags, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segmenter import __version__


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from segmenter.cli.main import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='segmenter')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported by --help'\n"
        "assert 'keras' not in sys.modules, 'keras imported by --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("config", "train", "predict", "evaluate", "sample-data"):
        assert command in result.stdout


def test_python_dash_m_and_version():
    result = subprocess.run(
        [sys.executable, "-m", "segmenter", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"segmenter, version {__version__}"


def test_user_error_is_one_line_without_traceback(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 0\n")
    result = runner("config", "show", "--config", bad)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    expected = f"Error: {bad}: train.steps: input should be greater than or equal to 1 (got 0)"
    assert lines == [expected]


def test_verbose_shows_the_traceback(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 0\n")
    result = runner("-v", "config", "show", "--config", bad)
    assert result.exit_code == 1
    assert "Traceback" in result.output
    assert result.output.strip().endswith("(got 0)")


def test_unknown_command_suggests(runner):
    result = runner("trian")
    assert result.exit_code == 2
    assert "No such command 'trian'" in result.output


def test_bad_config_is_reported_before_tensorflow_starts(tmp_path):
    """A typo must come back at once, not after TensorFlow's 10-second start."""
    code = (
        "import sys\n"
        "from segmenter.cli.main import cli\n"
        "for args in (['train', '--set', 'train.stepz=1', '--out', sys.argv[1]],\n"
        "             ['predict', '--run', sys.argv[1], 'x.jpg'],\n"
        "             ['evaluate', '--run', sys.argv[1]]):\n"
        "    try:\n"
        "        cli(args, prog_name='segmenter')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 1, (args, exc.code)\n"
        "    assert 'tensorflow' not in sys.modules, args\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "train.stepz: unknown key; did you mean 'train.steps'?" in result.stderr


@pytest.mark.parametrize("folder", [".", "sub/.."])
def test_sample_data_overwrite_of_the_current_folder_is_refused(runner, tmp_path, monkeypatch,
                                                                 folder):
    (tmp_path / "sub").mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    result = runner("sample-data", folder, "--overwrite", "--n", "2", "--size", "64")
    assert result.exit_code == 1
    assert f"Error: {folder}: is the current folder" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "sub"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_backend_option_cannot_switch_a_keras_already_started(runner):
    """``--backend`` chooses Keras' backend before it starts (tests/model/test_model_backends.py
    trains with it); in a process where Keras runs on another, one line says so."""
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    result = runner("--backend", other, "config", "show")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: --backend {other}: Keras has already started on {keras.backend.backend()} in "
        f"this process")
    same = runner("--backend", keras.backend.backend(), "config", "show")
    assert same.exit_code == 0 and "train:" in same.output
