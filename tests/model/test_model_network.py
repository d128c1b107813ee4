"""The residual encoder-decoder and the losses: shapes, serialisation, refusals."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from segmenter.config import ModelConfig
from segmenter.model.losses import BCEDiceLoss, DiceLoss, get_loss, soft_dice
from segmenter.model.network import build_model, check_width

pytestmark = pytest.mark.backend  # run again on JAX by the test command


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 16, 24, 3), dtype=np.float32)


def test_output_is_a_float32_probability_of_the_input_size(images):
    model = build_model(ModelConfig(depth=2, filters=4))
    out = np.asarray(model(images, training=False))
    assert model.input_shape == (None, None, None, 3)
    assert model.output_shape == (None, None, None, 1)
    assert out.shape == (2, 16, 24, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize(
    ("upsampling", "skips"), [("bilinear", False), ("transpose", False), ("bilinear", True)]
)
def test_save_load_gives_identical_outputs(tmp_path, images, upsampling, skips):
    model = build_model(ModelConfig(depth=2, filters=4, upsampling=upsampling, skips=skips))
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


def test_row_channel_model_takes_the_row_as_a_fourth_input(tmp_path, images):
    cfg = ModelConfig(depth=2, filters=4, row_channel=True, input_norm="window")
    model = build_model(cfg)
    assert model.input_shape == (None, None, None, 4)
    assert build_model(ModelConfig(depth=2, filters=4, row_channel="auto")).input_shape[-1] == 3
    top = np.concatenate([images, np.zeros_like(images[..., :1])], axis=-1)
    bottom = np.concatenate([images, np.ones_like(images[..., :1])], axis=-1)
    # Same colours, another height in the photo: another answer.
    assert np.abs(model.predict(top, verbose=0) - model.predict(bottom, verbose=0)).max() > 1e-4
    model.save(tmp_path / "row.keras")
    loaded = keras.saving.load_model(tmp_path / "row.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(bottom, verbose=0),
                                  model.predict(bottom, verbose=0))


def test_get_config_round_trip(images):
    model = build_model(ModelConfig(depth=2, filters=4, activation="linear"))
    clone = keras.Model.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(images)), np.asarray(model(images)), atol=1e-6)
    assert clone.layers[-1].activation.__name__ == "linear"


def test_skips_feed_each_decoder_level_the_encoder_map_of_its_size(images):
    depth, filters = 3, 4
    plain = build_model(ModelConfig(depth=depth, filters=filters))
    skips = build_model(ModelConfig(depth=depth, filters=filters, skips=True))
    assert skips.name.endswith("_skips") and not plain.name.endswith("_skips")
    joins = [layer for layer in skips.layers if isinstance(layer, keras.layers.Concatenate)]
    assert len(joins) == depth
    assert not any(isinstance(layer, keras.layers.Concatenate) for layer in plain.layers)
    # Decoder level i joins the encoder map that is 2^(depth-1-i) times smaller than the input.
    for join in joins:
        upsampled, encoder = (tuple(t.shape) for t in join.input)
        assert upsampled == encoder and upsampled[-1] == filters
    probe = keras.Model(skips.input, [join.output for join in joins])
    maps = probe(np.zeros((1, 32, 32, 3), np.float32))
    assert [m.shape[1] for m in maps] == [32 // 2 ** (depth - 1 - i) for i in range(depth)]
    # Per level, a 1x1 convolution (2F -> F, with bias) and its batch norm (4 F) are added.
    extra = depth * (2 * filters * filters + filters + 4 * filters)
    assert skips.count_params() == plain.count_params() + extra
    out = np.asarray(skips(images, training=False))
    assert out.shape == (2, 16, 24, 1) and 0.0 <= out.min() and out.max() <= 1.0


def test_width_not_a_multiple_of_2_to_the_depth_is_refused():
    model = build_model(ModelConfig(depth=2, filters=4))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(np.zeros((1, 18, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"width 20 is not a positive multiple of 2\^depth = 8"):
        check_width(20, 3)
    check_width(24, 3)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's graphs")
def test_dynamic_sizes_work_inside_a_graph():
    import tensorflow as tf

    model = build_model(ModelConfig(depth=2, filters=4))
    infer = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec((None, None, None, 3))])
    assert infer(np.zeros((1, 20, 12, 3), np.float32)).shape == (1, 20, 12, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 4"):
        infer(np.zeros((1, 18, 12, 3), np.float32))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="depth must be an int >= 1, got 0"):
        build_model(ModelConfig(), depth=0)
    with pytest.raises(ValueError, match="upsampling"):
        build_model(ModelConfig(), upsampling="nearest")


def test_mixed_precision_keeps_a_float32_output(images):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model(ModelConfig(depth=2, filters=4))
        assert model.layers[-1].compute_dtype == "float32"
        assert model(images).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


def test_losses_values_and_serialisation():
    land = np.zeros((2, 8, 8, 1), np.float32)
    land[:, :, 4:] = 1.0
    assert float(soft_dice(land, land)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice(land, 1.0 - land)) > 0.9
    for name in ("mse", "bce", "dice", "bce_dice"):
        loss = get_loss(name)
        assert float(loss(land, land * 0.98 + 0.01)) < float(loss(land, 1.0 - land))
    loss = BCEDiceLoss(dice_weight=0.5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, BCEDiceLoss) and again.dice_weight == 0.5
    assert isinstance(keras.losses.deserialize(keras.losses.serialize(DiceLoss())), DiceLoss)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")


def test_compiled_model_with_custom_loss_loads_in_safe_mode(tmp_path, images):
    model = build_model(ModelConfig(depth=2, filters=4))
    model.compile(optimizer="adam", loss=get_loss("bce_dice"))
    model.train_on_batch(images, np.ones((2, 16, 24, 1), np.float32))
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras", safe_mode=True)
    assert isinstance(loaded.loss, BCEDiceLoss)


def test_window_normalisation_ignores_a_photo_s_overall_colour_and_light(tmp_path, images):
    """With input_norm: window, a colour cast and an exposure change of the whole window do not
    change the output (up to float error); with the fixed scaling they do. Saved and loaded in
    safe mode, the layer keeps doing it."""
    cast = (images * 0.8 + 0.1).astype(np.float32)  # darker contrast, brighter: one affine map
    window = build_model(ModelConfig(depth=2, filters=4, input_norm="window"))
    fixed = build_model(ModelConfig(depth=2, filters=4))
    np.testing.assert_allclose(np.asarray(window(cast)), np.asarray(window(images)), atol=1e-4)
    assert np.abs(np.asarray(fixed(cast)) - np.asarray(fixed(images))).max() > 1e-3
    tinted = (images * 0.8 + np.array([0.05, 0.15, 0.02], np.float32)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(window(tinted)), np.asarray(window(images)), atol=1e-4)
    window.save(tmp_path / "w.keras")
    loaded = keras.saving.load_model(tmp_path / "w.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(window(images)), atol=1e-6)


def test_window_normalisation_removes_a_per_channel_offset():
    from segmenter.model.network import WindowStandardise

    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, (1, 8, 8, 3)).astype(np.float32)
    offset = base + np.array([0.2, -0.1, 0.3], np.float32)
    layer = WindowStandardise()
    np.testing.assert_allclose(np.asarray(layer(offset)), np.asarray(layer(base)), atol=1e-5)
    flat = np.full((1, 8, 8, 3), 0.4, np.float32)  # a flat window: the floor, no blow-up
    standardised = np.asarray(layer(flat))
    assert np.all(np.isfinite(standardised)) and np.abs(standardised).max() < 1e-5


@pytest.mark.parametrize("upsampling,skips", [("bilinear", False), ("transpose", False),
                                              ("bilinear", True)])
def test_filter_growth_widens_the_coarse_levels_and_round_trips(tmp_path, images, upsampling,
                                                                 skips):
    """model.filter_growth 2: 8, 16, 32, 64 kernels from the full size down to the coarsest
    level, the decoder mirroring them; saved and loaded with safe_mode, same outputs."""
    cfg = ModelConfig(depth=3, filters=8, filter_growth=2.0, upsampling=upsampling, skips=skips)
    model = build_model(cfg)
    assert model.get_layer("down2_conv1").filters == 64
    assert model.get_layer("down0_conv1").filters == 16
    assert model.get_layer("up0_conv1").filters == 32  # the decoder's coarsest level
    assert model.get_layer("up2_conv1").filters == 8
    assert model.name.endswith("_g2" + ("_skips" if skips else ""))
    flat = build_model(ModelConfig(depth=3, filters=8, upsampling=upsampling, skips=skips))
    assert model.count_params() > 3 * flat.count_params()
    path = tmp_path / "grown.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               atol=1e-6)


def test_filter_growth_1_is_the_notebook_network_layer_for_layer():
    flat = build_model(ModelConfig(depth=3, filters=8))
    same = build_model(ModelConfig(depth=3, filters=8, filter_growth=1.0))
    assert [layer.name for layer in same.layers] == [layer.name for layer in flat.layers]
    assert same.count_params() == flat.count_params() and same.name == flat.name
    assert not [layer for layer in flat.layers if "project" in layer.name]
