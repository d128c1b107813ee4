"""Config: defaults, YAML, --set precedence, every validation error, `config show` round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from segmenter.config import Config, load_config
from segmenter.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_valid_and_complete():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.source == "sample"
    assert cfg.data.water_class == 2
    assert cfg.postprocess.n_components == 5
    assert all(w % 2**cfg.model.depth == 0 for w in cfg.train.widths)


def test_empty_yaml_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_precedence_defaults_yaml_set(tmp_path):
    path = write(tmp_path, "train:\n  steps: 7\n  learning_rate: 0.01\n")
    cfg = load_config(path, ["train.steps=9"])
    assert cfg.train.steps == 9  # --set beats YAML
    assert cfg.train.learning_rate == 0.01  # YAML beats defaults
    assert cfg.train.validate_every == Config().train.validate_every  # default kept


def test_yaml_mapping_replaces_default_widths_and_set_edits_one(tmp_path):
    path = write(tmp_path, "train:\n  widths: {16: 5}\n")
    assert load_config(path).train.widths == {16: 5}
    cfg = load_config(path, ["train.widths.64=3"])
    assert cfg.train.widths == {16: 5, 64: 3}


def test_set_parses_yaml_values():
    cfg = load_config(
        None,
        ["predict.widths=[32, 64]", "train.augment.flip=false", "data.water_class=water"],
    )
    assert cfg.predict.widths == [32, 64]
    assert cfg.train.augment.flip is False
    assert cfg.data.water_class == "water"


def test_base_config_is_overridden(tmp_path):
    base = load_config(None, ["data.scale=0.25", "predict.overlap=0.25"])
    cfg = load_config(write(tmp_path, "predict:\n  overlap: 0.75\n"), base=base)
    assert cfg.data.scale == 0.25
    assert cfg.predict.overlap == 0.75


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train:\n  stpes: 5\n", "c.yaml: train.stpes: unknown key; did you mean 'train.steps'?"),
        ("trian:\n  steps: 5\n", "c.yaml: trian: unknown key; did you mean 'train'?"),
        ("train:\n  steps: many\n", "c.yaml: train.steps: input should be a valid integer"),
        ("train:\n  steps: 0\n", "c.yaml: train.steps: input should be greater than or equal to 1"),
        ("data:\n  scale: 1.5\n", "c.yaml: data.scale: input should be less than or equal to 1"),
        ("data:\n  anon: 'yes'\n", "c.yaml: data.anon: input should be a valid boolean"),
        ("train:\n  loss: hinge\n", "c.yaml: train.loss: input should be 'mse', 'bce', 'dice'"),
        ("train:\n  widths: {48: 4}\n", None),  # 48 = 6 x 8: valid
        ("train:\n  widths: {20: 4}\n", "c.yaml: train.widths.20: patch width must be a"),
        ("train:\n  widths: {32: 0}\n", "c.yaml: train.widths.32: batch size must be >= 1"),
        ("train:\n  widths: {}\n", "c.yaml: train.widths: at least one patch width"),
        (
            "model:\n  depth: 6\n",
            "c.yaml: train.widths.32: patch width must be a positive multiple of "
            "2^model.depth = 64",
        ),
        ("data:\n  bands: [0, 1, 2]\n", "c.yaml: data.bands: band numbers start at 1"),
        ("predict:\n  widths: [33]\n", "c.yaml: predict.widths: 33 is not a positive multiple"),
        ("postprocess:\n  n_components: [4, 5, 6]\n", None),
        ("postprocess:\n  n_components: 0\n",
         "c.yaml: postprocess.n_components: component counts must be between 1"),
        ("postprocess:\n  n_components: []\n",
         "c.yaml: postprocess.n_components: needs at least one count"),
        ("postprocess:\n  n_components: [5, 5]\n",
         "c.yaml: postprocess.n_components: each component count once"),
        ("postprocess:\n  n_components: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n",
         "c.yaml: postprocess.n_components: at most 9 mixtures"),
        ("postprocess:\n  n_components: five\n",
         "c.yaml: postprocess.n_components: input should be a valid integer"),
        ("train: 3\n", "c.yaml: train: must be a mapping"),
        ("- a\n- b\n", "c.yaml: a config must be a YAML mapping of sections, got list"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    if expected is None:
        load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) + ": " in message
    assert expected.replace("c.yaml", str(path)) in message
    assert "\n" not in message


def test_yaml_syntax_error_has_line_number(tmp_path):
    path = write(tmp_path, "train:\n  steps: 5\n  widths: [1,\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: YAML syntax error"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.steps", "--set train.steps: expected section.key=value"),
        ("train.stepz=3", "--set train.stepz=3: train.stepz: unknown key; did you mean"),
        ("train.steps=-1", "--set: train.steps: input should be greater than or equal to 1"),
        ("nosuch.key=1", "--set nosuch.key=1: nosuch: unknown key"),
        ("train.steps.x=1", "--set train.steps.x=1: train.steps is a int, not a section"),
    ],
)
def test_set_errors(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    load_config(REPO / "configs" / name)


def test_shipped_configs_include_the_documented_ones():
    names = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {"default.yaml", "ontario.yaml", "photo.yaml", "photo-large.yaml",
            "notebook-small.yaml", "fine-tune.yaml"} <= names


def test_extends_layers_defaults_file_extended_file_and_set(tmp_path):
    """defaults < the extended file < this file < --set; sections merge key by key."""
    write(tmp_path, "train:\n  steps: 7\n  learning_rate: 0.01\n  augment:\n"
          "    flip: false\n    greyscale: 0.3\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ntrain:\n  steps: 9\n  augment:\n"
                  "    greyscale: 0.1\n")
    cfg = load_config(child)
    assert cfg.train.steps == 9  # this file beats the extended one
    assert cfg.train.learning_rate == 0.01  # the extended file beats the defaults
    assert (cfg.train.augment.flip, cfg.train.augment.greyscale) == (False, 0.1)
    assert cfg.train.validate_every == Config().train.validate_every  # default kept
    assert load_config(child, ["train.steps=11"]).train.steps == 11  # --set beats both


def test_extends_is_relative_to_the_file_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "configs" / "variants").mkdir(parents=True)
    write(tmp_path / "configs", "train:\n  steps: 7\n", "base.yaml")
    child = write(tmp_path / "configs" / "variants", "extends: ../base.yaml\n", "child.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the folder of either file
    assert load_config(child).train.steps == 7
    absolute = write(tmp_path, f"extends: {tmp_path / 'configs' / 'base.yaml'}\n", "abs.yaml")
    assert load_config(absolute).train.steps == 7


def test_extends_nests(tmp_path):
    write(tmp_path, "train:\n  steps: 5\n  seed: 1\n  learning_rate: 0.01\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\ntrain:\n  steps: 6\n  seed: 2\n", "b.yaml")
    c = write(tmp_path, "extends: b.yaml\ntrain:\n  steps: 7\n", "c.yaml")
    cfg = load_config(c)
    assert (cfg.train.steps, cfg.train.seed, cfg.train.learning_rate) == (7, 2, 0.01)


def test_extends_is_not_part_of_the_effective_config(tmp_path, runner):
    write(tmp_path, "train:\n  steps: 7\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ndata:\n  scale: 0.25\n")
    cfg = load_config(child)
    assert "extends" not in cfg.to_dict() and "extends" not in cfg.to_yaml()
    result = runner("config", "show", "--config", child)
    assert result.exit_code == 0, result.output
    assert "extends" not in result.output
    assert yaml.safe_load(result.output) == cfg.to_dict()  # the merged result, as saved
    assert (cfg.train.steps, cfg.data.scale) == (7, 0.25)
    result = runner("config", "validate", child)
    assert result.exit_code == 0 and "valid" in result.output


def test_extends_over_a_runs_config(tmp_path):
    """predict / evaluate: the run's config < the extended file < the --config file < --set."""
    from segmenter.cli.options import resolve_config

    run_cfg = load_config(None, ["data.scale=0.25", "predict.overlap=0.25", "train.steps=3"])
    write(tmp_path, "predict:\n  overlap: 0.75\n  tta: true\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\npredict:\n  tta: false\n")
    cfg = resolve_config(child, ("predict.batch_size=4",), base=run_cfg)
    assert (cfg.data.scale, cfg.train.steps) == (0.25, 3)  # the run's, untouched
    assert (cfg.predict.overlap, cfg.predict.tta, cfg.predict.batch_size) == (0.75, False, 4)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("extends: nope.yaml\n", "c.yaml: extends: {dir}/nope.yaml: config file not found"),
        ("extends: 3\n", "c.yaml: extends: must be the path of a config file (got 3)"),
        ("extends:\n", "c.yaml: extends: must be the path of a config file (got None)"),
        ("extends: ''\n", "c.yaml: extends: must be the path of a config file (got '')"),
        ("extends: [a.yaml]\n", "c.yaml: extends: must be the path of a config file (got a list)"),
        ("extends: list.yaml\n",
         "c.yaml: extends: {dir}/list.yaml: a config must be a YAML mapping of sections, got list"),
        ("extends: broken.yaml\n", "c.yaml: extends: {dir}/broken.yaml:3:1: YAML syntax error"),
        ("extends: c.yaml\n", "c.yaml: extends: the files extend each other in a cycle: "
                               "{dir}/c.yaml -> {dir}/c.yaml"),
    ],
)
def test_extends_errors_name_the_file_and_the_key(tmp_path, text, expected):
    write(tmp_path, "- a\n- b\n", "list.yaml")
    write(tmp_path, "train:\n  widths: [1,\n", "broken.yaml")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(expected.replace("{dir}", str(tmp_path)).replace(
        "c.yaml", str(path), 1)), message
    assert "\n" not in message


def test_extends_cycle_through_several_files(tmp_path, runner):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: sub/../a.yaml\n", "b.yaml")
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    expected = (f"{b}: extends: the files extend each other in a cycle: "
                f"{a} -> {b} -> {tmp_path}/sub/../a.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(a)
    assert str(info.value) == expected
    result = runner("config", "validate", a)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {expected}"


def test_extends_error_deeper_in_the_chain_names_that_file(tmp_path):
    write(tmp_path, "extends: missing.yaml\n", "b.yaml")
    a = write(tmp_path, "extends: b.yaml\n", "a.yaml")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/b.yaml: extends: {tmp_path}/missing"):
        load_config(a)


def test_errors_name_the_layer_of_an_extended_file(tmp_path):
    """A bad value in the extended file names that file; the file extending it can repair it."""
    base = write(tmp_path, "train:\n  loss: hinge\n  stpes: 3\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ntrain:\n  loss: mse\n")
    with pytest.raises(ConfigError, match=rf"^{base}: train.stpes: unknown key; did you mean"):
        load_config(child)
    write(tmp_path, "model:\n  depth: 6\n", "base.yaml")
    with pytest.raises(ConfigError, match=rf"^{base}: train.widths.32: patch width"):
        load_config(child)
    fixed = write(tmp_path, "extends: base.yaml\ntrain:\n  widths: {64: 4}\n", "fixed.yaml")
    assert load_config(fixed).train.widths == {64: 4}
    with pytest.raises(ConfigError, match=r"^--set: train.widths.32: patch width"):
        load_config(child, ["train.widths.32=4"])


def test_extends_is_a_top_level_key_only(tmp_path):
    path = write(tmp_path, "extend: base.yaml\n")
    with pytest.raises(ConfigError, match=r"extend: unknown key; did you mean 'extends'\?"):
        load_config(path)
    path = write(tmp_path, "train:\n  extends: base.yaml\n")
    with pytest.raises(ConfigError, match=r"train.extends: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set extends=a.yaml: extends: unknown key"):
        load_config(None, ["extends=a.yaml"])


def _leaves(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    """Every key a YAML mapping sets, by its path through sections (a mapping value such as
    train.widths is one key)."""
    out: dict[tuple, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key in {"data", "model", "train", "predict",
                                               "postprocess", "augment", "sample"}:
            out.update(_leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


@pytest.mark.parametrize("name", ["photo-large.yaml", "fine-tune.yaml"])
def test_photo_variants_are_photo_yaml_but_for_the_keys_they_set(name):
    """photo-large.yaml and fine-tune.yaml extend photo.yaml and say only what differs: the
    effective config is photo.yaml's with their own keys put in, each differing from it."""
    from segmenter.config import read_yaml

    raw = read_yaml(REPO / "configs" / name)
    assert raw.pop("extends") == "photo.yaml"
    own = _leaves(raw)
    photo = load_config(REPO / "configs" / "photo.yaml").to_dict()
    large = load_config(REPO / "configs" / name).to_dict()
    expected = copy.deepcopy(photo)
    for path, value in own.items():
        node = expected
        for part in path[:-1]:
            node = node[part]
        assert node[path[-1]] != value, f"{'.'.join(path)} is photo.yaml's value: drop it"
        node[path[-1]] = value
    assert large == expected
    assert len(own) < 10  # a handful of keys, not a copy


def test_ontario_config_is_the_notebook_setup():
    cfg = load_config(REPO / "configs" / "ontario.yaml")
    assert cfg.data.source == "s3://cdi-workshop/semseg_data/ontario"
    assert cfg.data.anon is True
    assert cfg.data.scale == 0.125
    assert cfg.train.widths == {16: 2000, 32: 1000, 64: 500, 128: 250, 256: 125}
    assert cfg.train.steps == 600
    assert (cfg.model.filters, cfg.model.kernel_size, cfg.model.depth) == (16, 3, 3)
    assert cfg.predict.widths == [32, 64, 128, 256]
    assert cfg.postprocess.n_components == 5


def test_config_show_round_trip(runner, tmp_path):
    result = runner("config", "show", "--set", "train.steps=11", "--set", "data.scale=0.25")
    assert result.exit_code == 0, result.output
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.output)
    cfg = load_config(shown)
    assert cfg.train.steps == 11 and cfg.data.scale == 0.25
    assert yaml.safe_load(result.output) == cfg.to_dict()


def test_config_show_ontario_names_the_s3_source(runner):
    result = runner("config", "show", "--config", str(REPO / "configs" / "ontario.yaml"))
    assert result.exit_code == 0
    assert "source: s3://cdi-workshop/semseg_data/ontario" in result.output


def test_config_validate_cli(runner, tmp_path):
    good = write(tmp_path, "train:\n  steps: 3\n", "good.yaml")
    result = runner("config", "validate", good)
    assert result.exit_code == 0 and "valid" in result.output
    bad = write(tmp_path, "train:\n  stpes: 3\n", "bad.yaml")
    result = runner("config", "validate", bad)
    assert result.exit_code == 1
    expected = f"Error: {bad}: train.stpes: unknown key; did you mean 'train.steps'?"
    assert result.output.strip() == expected
    assert "Traceback" not in result.output


def test_exponent_floats_read_as_numbers(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 1e-3\n")
    assert load_config(path).train.learning_rate == 0.001
    assert load_config(None, ["train.learning_rate=5E-4"]).train.learning_rate == 0.0005


def test_layers_are_validated_together_in_any_order(tmp_path):
    fix_widths = "train.widths={64: 4}"
    for overrides in (["model.depth=6", fix_widths], [fix_widths, "model.depth=6"]):
        cfg = load_config(None, overrides)
        assert (cfg.model.depth, cfg.train.widths) == (6, {64: 4})
    # A file whose depth rejects the default widths is repaired by --set.
    path = write(tmp_path, "model:\n  depth: 6\n")
    assert load_config(path, [fix_widths]).train.widths == {64: 4}
    with pytest.raises(ConfigError, match=rf"^{path}: train.widths.32: patch width"):
        load_config(path)


def test_error_names_the_layer_that_set_the_key(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=r"^--set: data.scale: input should be"):
        load_config(path, ["data.scale=7"])


def test_empty_section_changes_nothing(tmp_path):
    assert load_config(write(tmp_path, "train:\npredict:\n")) == Config()


def test_string_keys_keep_the_text_of_set():
    cfg = load_config(None, ["data.source=2024", "data.endpoint_url=null", "data.test_dir="])
    assert cfg.data.source == "2024"
    assert cfg.data.endpoint_url is None
    assert cfg.data.test_dir == ""


@pytest.mark.parametrize("value", ["0", "2.5", "''"])
def test_water_class_is_a_positive_number_or_a_name(value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.water_class={value}"])
    message = str(info.value)
    assert message.startswith("--set: data.water_class: ")
    assert " or " in message  # both ways of naming the class are mentioned


def test_set_string_values_are_trimmed_and_unquoted():
    cfg = load_config(None, ["data.source= /data/photos ", "data.train_dir='fit'"])
    assert cfg.data.source == "/data/photos"
    assert cfg.data.train_dir == "fit"


def test_schema_and_loading_live_apart_behind_one_import():
    """Issue 9: config/schema.py is the schema alone (usable without the YAML machinery);
    config/load.py resolves layers; every public name still imports from segmenter.config."""
    import ast
    from pathlib import Path

    import segmenter.config as config
    from segmenter.config import load, schema

    for name in config.__all__:
        assert getattr(config, name) is (getattr(schema, name, None) or getattr(load, name))
    assert config.Config is schema.Config and config.load_config is load.load_config
    tree = ast.parse(Path(schema.__file__).read_text())
    defined = {node.name for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & {"load_config", "read_yaml", "safe_load", "parse_override"}
    cfg = load.load_config(None, ["train.steps=7"])
    assert isinstance(cfg, schema.Config) and cfg.train.steps == 7
