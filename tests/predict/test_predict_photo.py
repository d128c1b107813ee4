"""Weighted window stitching with real (tiny) Keras models.

A pointwise model (a 1x1 convolution) predicts each pixel from that pixel alone, so whatever
the windows, weights, padding or flips, correct stitching must give back exactly the model
applied to the whole image: any seam, misplaced window or wrong normalisation shows up.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from segmenter.config import Config, load_config
from segmenter.data import images
from segmenter.errors import ConfigError, SegmenterError
from segmenter.model import compiled, introspect, norm
from segmenter.model.network import build_model
from segmenter.predict import photo, stitch, windows

pytestmark = pytest.mark.backend  # run again on JAX by the test command


def pointwise_model(kernel=(2.0, 1.0, -3.0), bias=0.2, activation="sigmoid", bn=False):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(1, 1, activation=None if bn else activation)(inputs)
    if bn:
        batchnorm = keras.layers.BatchNormalization()
        x = keras.layers.Activation(activation)(batchnorm(x))
    model = keras.Model(inputs, x)
    conv = model.layers[1]
    conv.set_weights([np.array(kernel, np.float32).reshape(1, 1, 3, 1),
                      np.array([bias], np.float32)])
    if bn:
        batchnorm.set_weights([np.array([2.0]), np.array([0.5]), np.array([0.3]), np.array([4.0])])
    return model


def direct(model, image):
    return keras.ops.convert_to_numpy(model(image[None], training=False))[0, ..., 0]


def cfg_with(*overrides: str) -> Config:
    return load_config(None, ["data.scale=1.0", *overrides])


def grid_count(length: int, window: int, overlap: float) -> int:
    """Windows along one axis of ``length`` photo pixels, by SPEC.md's grid: mirror-padded by
    half a window per side, starts every ``round(window * (1 - overlap))`` pixels, the last one
    moved back to end flush with the padded axis."""
    padded = length + 2 * (window // 2)
    stride = max(1, round(window * (1 - overlap)))
    return len(range(0, padded - window, stride)) + 1


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.random((45, 70, 3), dtype=np.float32)


def test_window_weight_smoothstep():
    weight = windows.window_weight(32)
    assert weight.dtype == np.float32 and weight.shape == (32, 32)
    assert weight.min() > 0
    assert weight[15, 15] == pytest.approx(1.0)
    assert weight[0, 0] < 0.01 and weight[0, 16] < weight[8, 16] < weight[16, 16]
    assert windows.smoothstep(1.3, 0.3, np.array([0.0, 0.8, 1.5])) == pytest.approx(
        [1.0, 0.5, 0.0])


@pytest.mark.parametrize("window,overlap,tta", [(16, 0.5, False), (32, 0.25, True),
                                                (64, 0.5, False)])
def test_stitching_reproduces_a_pointwise_model(image, window, overlap, tta, monkeypatch):
    # Tiny batches, so the two-buffer pipeline runs many batches and a shorter last one.
    monkeypatch.setattr(compiled, "MIN_BATCH_PIXELS", 1)
    model = pointwise_model()
    stitched, info = photo.predict_scale(model, image, window, overlap=overlap,
                                             batch_size=3, tta=tta)
    assert stitched.shape == image.shape[:2] and stitched.dtype == np.float32
    np.testing.assert_allclose(stitched, direct(model, image), atol=1e-5)
    count = grid_count(45, window, overlap) * grid_count(70, window, overlap)
    assert info["windows"] == count
    # the cost measure: window pixels computed per photo pixel (not per padded pixel)
    assert info["coverage"] == pytest.approx(count * window * window / (45 * 70))


def test_image_smaller_than_window_is_padded_and_cropped():
    tiny = np.random.default_rng(1).random((5, 9, 3), dtype=np.float32)
    model = pointwise_model()
    stitched, _ = photo.predict_scale(model, tiny, 32)
    assert stitched.shape == (5, 9)
    np.testing.assert_allclose(stitched, direct(model, tiny), atol=1e-5)


def test_batchnorm_runs_in_inference_mode(image):
    model = pointwise_model(bn=True)
    stitched, _ = photo.predict_scale(model, image, 16)
    raw = image @ np.array([2.0, 1.0, -3.0], np.float32) + 0.2
    expected = 1 / (1 + np.exp(-(2.0 * (raw - 0.3) / np.sqrt(4.0 + 1e-3) + 0.5)))
    np.testing.assert_allclose(stitched, expected, atol=1e-4)


def _adapted_expected(image, window, share):
    """The pointwise BatchNorm model's map with its statistics moved ``share`` of the way to
    those of the tiles that cover the photo once (numpy: the tiles' raw values, biased
    variance)."""
    from segmenter.predict import windows as patches

    pad = patches.pad_width(window)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    raw = padded @ np.array([2.0, 1.0, -3.0], np.float32) + 0.2
    positions = patches.adapt_windows(*image.shape[:2], window, 1000)
    values = np.stack([raw[t : t + window, c : c + window] for t, c in positions])
    mean = (1 - share) * 0.3 + share * values.mean()
    variance = (1 - share) * 4.0 + share * values.var()
    raw_photo = image @ np.array([2.0, 1.0, -3.0], np.float32) + 0.2
    expected = 1 / (1 + np.exp(-(2.0 * (raw_photo - mean) / np.sqrt(variance + 1e-3) + 0.5)))
    return expected, len(positions)


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_adapt_norm_moves_batchnorm_statistics_toward_the_photo_s_own(image, share):
    model = pointwise_model(bn=True)
    before = [np.array(w) for w in model.get_weights()]
    stitched, info = photo.predict_scale(model, image, 32, adapt=share)
    expected, windows = _adapted_expected(image, 32, share)
    assert windows < norm.ADAPT_WINDOWS and info["adapted_on"] == windows
    np.testing.assert_allclose(stitched, expected, atol=2e-4)
    plain, plain_info = photo.predict_scale(model, image, 32)
    assert np.abs(plain - expected).max() > 0.01 and "adapted_on" not in plain_info
    for kept, now in zip(before, model.get_weights(), strict=True):  # the model as it was
        np.testing.assert_array_equal(kept, now)
    assert model.layers[2].momentum == 0.99


def test_adapt_norm_reaches_predict_land_and_takes_at_most_96_tiles(image):
    model = pointwise_model(bn=True)
    big = np.tile(image, (8, 8, 1))  # 360 x 560: 12 x 18 tiles of 32 px
    cfg = cfg_with("predict.adapt_norm=0.5")
    info = photo.predict_land({32: model}, big, cfg).info
    assert info["widths"][32]["windows"] == grid_count(360, 32, 0.5) * grid_count(560, 32, 0.5)
    assert len(windows.adapt_windows(360, 560, 32, 1000)) == 12 * 18 > norm.ADAPT_WINDOWS
    assert info["widths"][32]["adapted_on"] == norm.ADAPT_WINDOWS
    assert windows.spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert windows.spread([1, 2], 4) == [1, 2]


def test_photo_statistics_are_put_back_when_prediction_fails(image):
    model = pointwise_model(bn=True)
    stats = norm.adapted_statistics(model, image[None], 1.0)
    assert stats[0][0][0] == pytest.approx(float((image @ [2.0, 1.0, -3.0]).mean() + 0.2),
                                           abs=1e-4)
    with pytest.raises(RuntimeError), norm.norm_statistics(model, stats):
        assert float(model.layers[2].moving_mean[0]) == pytest.approx(stats[0][0][0])
        raise RuntimeError("a window failed")
    assert float(model.layers[2].moving_mean[0]) == pytest.approx(0.3)
    assert float(model.layers[2].moving_variance[0]) == pytest.approx(4.0)
    # the photo path adapts and predicts in one block: the same statistics, put back alike
    with pytest.raises(RuntimeError), norm.adapted_norm(model, image[None], 1.0):
        assert float(model.layers[2].moving_mean[0]) == pytest.approx(stats[0][0][0])
        assert model.layers[2].momentum == 0.99
        raise RuntimeError("a window failed")
    assert float(model.layers[2].moving_mean[0]) == pytest.approx(0.3)
    assert model.layers[2].momentum == 0.99


def test_predict_land_resizes_to_photo_and_back(image):
    model = pointwise_model()
    cfg = load_config(None, ["data.scale=0.5"])
    prediction = photo.predict_land({16: model}, image, cfg)
    assert prediction.land_prob.shape == image.shape[:2]
    assert prediction.info["scaled_size"] == [22, 35]
    small = images.resize_map(image, (22, 35))
    expected = images.resize_map(direct(model, small), image.shape[:2])
    np.testing.assert_allclose(prediction.land_prob, np.clip(expected, 0, 1), atol=1e-5)
    assert prediction.per_scale == {}


def test_scales_merge_by_mean_or_by_validation_score(image):
    low = pointwise_model(kernel=(0, 0, 0), bias=0.2, activation="linear")
    high = pointwise_model(kernel=(0, 0, 0), bias=0.8, activation="linear")
    models = {16: low, 32: high}
    mse = ("model.activation=linear", "train.loss=mse")
    mean = photo.predict_land(models, image, cfg_with(*mse), keep_scales=True)
    np.testing.assert_allclose(mean.land_prob, 0.5, atol=1e-6)
    assert set(mean.per_scale) == {16, 32}
    np.testing.assert_allclose(mean.per_scale[16], 0.2, atol=1e-6)
    weighted = photo.predict_land(
        models, image, cfg_with(*mse, "predict.merge=weighted"),
        weights={16: 1.0, 32: 3.0})
    np.testing.assert_allclose(weighted.land_prob, (0.2 + 3 * 0.8) / 4, atol=1e-6)
    with pytest.raises(ConfigError, match="validation score"):
        photo.predict_land(models, image, cfg_with("predict.merge=weighted"))


def test_linear_output_is_clipped_and_minmax_rescales(image):
    model = pointwise_model(kernel=(4.0, 0, 0), bias=-1.0, activation="linear")
    mse = ("model.activation=linear", "train.loss=mse")
    clipped = photo.predict_land({16: model}, image, cfg_with(*mse))
    # 4 R - 1 runs from -1 to 3 over the photo: clipped to [0, 1] pixel by pixel
    np.testing.assert_allclose(clipped.land_prob, np.clip(4 * image[..., 0] - 1, 0, 1),
                               atol=1e-5)
    assert clipped.land_prob.min() == 0.0 and clipped.land_prob.max() == 1.0
    stretched = photo.predict_land(
        {16: pointwise_model(kernel=(0.2, 0, 0), bias=0.3, activation="linear")}, image,
        cfg_with(*mse, "predict.rescale=minmax"))
    # 0.2 R + 0.3 stretched linearly from its own minimum and maximum to [0, 1]
    red = image[..., 0]
    np.testing.assert_allclose(stretched.land_prob, (red - red.min()) / (red.max() - red.min()),
                               atol=1e-5)


@pytest.mark.parametrize("loss", ["bce", "dice", "bce_dice"])
def test_linear_head_with_a_logit_loss_is_read_through_a_sigmoid(image, loss):
    logits = pointwise_model(kernel=(4.0, -2.0, 1.0), bias=-1.0, activation="linear")
    probs = pointwise_model(kernel=(4.0, -2.0, 1.0), bias=-1.0, activation="sigmoid")
    cfg = cfg_with("model.activation=linear", f"train.loss={loss}")
    assert introspect.output_transform(logits, cfg) == "sigmoid"
    assert introspect.output_transform(probs, cfg) == "raw"  # a saved model's sigmoid head
    got = photo.predict_land({16: logits}, image, cfg).land_prob
    np.testing.assert_allclose(got, direct(probs, image), atol=1e-5)
    assert 0.0 < got.min() and got.max() < 1.0


def test_non_finite_model_output_is_an_error_naming_the_width(image):
    model = pointwise_model(bias=float("nan"))
    with pytest.raises(SegmenterError, match="width 16 predicted non-finite") as caught:
        photo.predict_land({16: model}, image, cfg_with())
    assert "\n" not in str(caught.value)


def test_compiled_function_cache_does_not_keep_models_alive(image):
    import gc
    import weakref

    model = pointwise_model()
    photo.predict_scale(model, image, 16)
    assert model in compiled._COMPILED
    alive = weakref.ref(model)
    before = len(compiled._COMPILED)
    del model
    gc.collect()
    assert alive() is None
    assert len(compiled._COMPILED) < before  # its entry (with its traced functions) went too


class PositionalModel(keras.Model):
    """Output = sigmoid(pointwise colour term) + a fixed pattern over the window's own pixels:
    every window gives a different answer for the same photo pixel, so the stitched value
    depends on which windows are blended with which weights."""

    def __init__(self, window: int):
        super().__init__()
        self.conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
        axis = np.linspace(0.0, 1.0, window, dtype=np.float32)
        self.pattern = (0.3 * axis[:, None] - 0.2 * axis[None, :] ** 2)[None, :, :, None]

    def call(self, x, training=False):
        return self.conv(x) + self.pattern


def test_stitching_matches_a_numpy_reference_of_the_smoothstep_blend(image, monkeypatch):
    from segmenter.predict import windows as patches

    monkeypatch.setattr(compiled, "MIN_BATCH_PIXELS", 1)  # many batches through the pipeline
    window, overlap = 16, 0.5
    model = PositionalModel(window)
    model(np.zeros((1, window, window, 3), np.float32))
    model.conv.set_weights([np.array([2.0, 1.0, -3.0], np.float32).reshape(1, 1, 3, 1),
                            np.array([0.2], np.float32)])
    got, _ = photo.predict_scale(model, image, window, overlap=overlap, batch_size=4)

    # Reference, written from SPEC.md: mirror-pad by half a window, smoothstep(1.3, 0.3, r)
    # weights (floored at MIN_WEIGHT), sum of prediction x weight over sum of weight.
    pad = window // 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    axis = np.linspace(-1, 1, window)
    radius = np.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2)
    t = np.clip((radius - 1.3) / (0.3 - 1.3), 0, 1)
    weight = np.maximum(t * t * (3 - 2 * t), windows.MIN_WEIGHT)
    total = np.zeros(padded.shape[:2])
    weight_sum = np.zeros(padded.shape[:2])
    for top, left in patches.grid_windows(*padded.shape[:2], window, overlap):
        crop = padded[top : top + window, left : left + window]
        out = np.asarray(model(crop[None]))[0, ..., 0]
        total[top : top + window, left : left + window] += out * weight
        weight_sum[top : top + window, left : left + window] += weight
    reference = (total / weight_sum)[pad : pad + image.shape[0], pad : pad + image.shape[1]]
    np.testing.assert_allclose(got, reference, atol=2e-5)
    # a uniform weight (or a misplaced one) would give a visibly different map
    plain = np.zeros(padded.shape[:2])
    count = np.zeros(padded.shape[:2])
    for top, left in patches.grid_windows(*padded.shape[:2], window, overlap):
        crop = padded[top : top + window, left : left + window]
        plain[top : top + window, left : left + window] += np.asarray(model(crop[None]))[0, ..., 0]
        count[top : top + window, left : left + window] += 1
    uniform = (plain / count)[pad : pad + image.shape[0], pad : pad + image.shape[1]]
    assert np.abs(uniform - reference).max() > 0.01


def test_random_sampling_is_reproducible_and_fills_holes(image, caplog):
    model = pointwise_model()
    cfg = cfg_with("predict.sampling=random", "predict.random_windows={16: 3}")
    with caplog.at_level("WARNING"):
        first = photo.predict_land({16: model}, image, cfg)
    second = photo.predict_land({16: model}, image, cfg)
    np.testing.assert_array_equal(first.land_prob, second.land_prob)
    assert first.info["uncovered_pixels"] > 0 and "covered by no window" in caplog.text
    covered = first.land_prob != stitch.UNCOVERED_VALUE
    np.testing.assert_allclose(first.land_prob[covered], direct(model, image)[covered],
                               atol=1e-5)
    many = photo.predict_land(
        {16: model}, image, cfg_with("predict.sampling=random",
                                     "predict.random_windows={16: 400}"))
    assert many.info["uncovered_pixels"] == 0


def test_encoder_decoder_model_and_width_selection(image):
    model = build_model(load_config().model, depth=2, filters=4)
    cfg = cfg_with("predict.widths=[16]")
    prediction = photo.predict_land({16: model, 32: model}, image, cfg)
    assert list(prediction.info["widths"]) == [16]
    # The map is the width-16 stitching of the model's sigmoid head as it is (data.scale 1):
    # no second sigmoid, no other width merged in (width 32 alone gives another map).
    width16, _ = photo.predict_scale(model, image, 16)
    width32, _ = photo.predict_scale(model, image, 32)
    np.testing.assert_allclose(prediction.land_prob, width16, atol=1e-6)
    assert np.abs(width32 - width16).max() > 1e-3
    with pytest.raises(ConfigError, match="no trained model of width 64"):
        photo.predict_land({16: model}, image, cfg_with("predict.widths=[64]"))
    with pytest.raises(SegmenterError, match="no trained models"):
        photo.predict_land({}, image, cfg)
    with pytest.raises(SegmenterError, match="RGB"):
        photo.predict_land({16: model}, image[..., 0], cfg)


def test_large_batch_size_is_one_trace_per_window_size(image, monkeypatch):
    monkeypatch.setattr(compiled, "MIN_BATCH_PIXELS", 1)  # batches of 8 and 5 windows
    model = pointwise_model()
    _, info = photo.predict_scale(model, image, 16, batch_size=8)
    assert info["windows"] > 8 and info["windows"] % 8  # several batches, a shorter last one
    photo.predict_scale(model, image[:30], 16, batch_size=5)
    infer = compiled.compiled_infer(model, (16, 16))
    if keras.backend.backend() == "tensorflow":
        assert infer.compiled.experimental_get_tracing_count() == 1
    else:  # JAX: batches padded to the largest seen, one compiled shape
        assert infer.compiled._cache_size() == 1


def test_photo_is_shrunk_exactly_as_the_data_loader_does(image):
    assert photo.scaled_shape is images.scaled_shape
    shape = images.scaled_shape(image.shape[:2], 0.5)
    small = images.resize_map(image, shape)
    for channel in range(3):
        np.testing.assert_array_equal(small[..., channel],
                                      images.resize_land(image[..., channel], shape))


@pytest.mark.parametrize("tta", [False, True])
def test_tta_runs_the_same_batches_as_plain_prediction(image, monkeypatch, tta):
    """With TTA a call cuts a quarter of the windows, so the stacked flips make a batch of
    the usual size (16 windows of 256 px, not 64), and the result is unchanged."""
    monkeypatch.setattr(compiled, "MIN_BATCH_PIXELS", 1)
    model = pointwise_model()
    real = compiled.compiled_infer(model, (16, 16), tta=tta)
    calls = []

    def spy(model_, size, tta=False, output="raw", upright=False, grey=False):
        def run(windows):
            calls.append(len(windows))
            return real(windows)
        return run

    monkeypatch.setattr(photo, "compiled_infer", spy)  # as predict_scale calls it
    stitched, info = photo.predict_scale(model, image, 16, batch_size=8, tta=tta)
    assert max(calls) == (2 if tta else 8) and sum(calls) == info["windows"]
    assert compiled.windows_per_call(8, 16, tta) * (4 if tta else 1) == 8
    np.testing.assert_allclose(stitched, direct(model, image), atol=1e-5)


def row_reader():
    """A 4-channel pointwise model that answers each pixel's row channel: its input, shown."""
    inputs = keras.Input((None, None, 4))
    conv = keras.layers.Conv2D(1, 1)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([0, 0, 0, 1], np.float32).reshape(1, 1, 4, 1),
                      np.zeros(1, np.float32)])
    return model


@pytest.mark.parametrize("tta", [False, True])
def test_a_row_channel_model_is_given_each_pixel_s_row_in_the_photo(image, tta):
    model = row_reader()
    assert introspect.input_channels(model) == 4
    assert introspect.input_channels(pointwise_model()) == 3
    got, _ = photo.predict_scale(model, image, 16, overlap=0.5, batch_size=4, tta=tta,
                                     upright=True)
    expected = np.broadcast_to(np.linspace(0, 1, image.shape[0], dtype=np.float32)[:, None],
                               image.shape[:2])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Through predict_land's rescaling too: the row of the scaled photo (a linear head of an
    # MSE model is read as it is, clipped to [0, 1]).
    cfg = cfg_with("data.scale=0.5", "data.upright=true", "train.loss=mse")
    land = photo.predict_land({16: model}, image, cfg).land_prob
    assert land.shape == image.shape[:2]
    assert abs(land[0].mean()) < 0.05 and abs(land[-1].mean() - 1) < 0.05
    assert (np.diff(land.mean(axis=1)) >= -1e-6).all()


def test_upright_tta_averages_the_photo_and_its_left_right_mirror_only():
    """data.upright: the models never saw a photo upside down, so TTA must not show them one."""
    model = build_model(load_config().model, depth=2, filters=4)  # not symmetric: any flip shows
    rng = np.random.default_rng(3)
    windows = rng.random((3, 16, 16, 3), dtype=np.float32)

    def plain(x):
        return np.asarray(model(x, training=False))[..., 0]

    mirrored = (plain(windows) + plain(windows[:, :, ::-1])[:, :, ::-1]) / 2
    upright = np.asarray(compiled.compiled_infer(model, (16, 16), tta=True, upright=True)(windows))
    np.testing.assert_allclose(upright, mirrored, atol=1e-5)
    every_flip = np.asarray(compiled.compiled_infer(model, (16, 16), tta=True)(windows))
    assert np.abs(every_flip - mirrored).max() > 1e-4
    # Half the passes: a call cuts twice the windows of four-pass TTA for the same batch.
    assert (compiled.windows_per_call(8, 16, tta=True, upright=True)
            == 2 * compiled.windows_per_call(8, 16, tta=True))
    # predict_land reads data.upright from the (run's) config.
    image = rng.random((40, 40, 3), dtype=np.float32)
    plain_cfg = cfg_with("predict.tta=true")
    upright_cfg = cfg_with("predict.tta=true", "data.upright=true")
    by_upright = photo.predict_land({16: model}, image, upright_cfg).land_prob
    by_default = photo.predict_land({16: model}, image, plain_cfg).land_prob
    assert np.abs(by_upright - by_default).max() > 1e-4


def test_grey_passes_average_the_photo_in_colour_and_in_grey():
    """predict.grey: half the passes see the windows' luma, at no extra cost under TTA."""
    model = build_model(load_config().model, depth=2, filters=4)  # not symmetric: any flip shows
    rng = np.random.default_rng(4)
    windows = rng.random((3, 16, 16, 3), dtype=np.float32)
    luma = windows @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = np.repeat(luma[..., None], 3, axis=-1)

    def plain(x):
        return np.asarray(model(x, training=False))[..., 0]

    def infer(**kwargs):
        return np.asarray(compiled.compiled_infer(model, (16, 16), **kwargs)(windows))

    np.testing.assert_allclose(infer(grey=True), (plain(windows) + plain(grey)) / 2, atol=1e-5)
    mirrored_grey = plain(grey[:, :, ::-1])[:, :, ::-1]
    np.testing.assert_allclose(infer(tta=True, upright=True, grey=True),
                               (plain(windows) + mirrored_grey) / 2, atol=1e-5)
    every_flip = (plain(windows) + mirrored_grey + plain(windows[:, ::-1])[:, ::-1]
                  + plain(grey[:, ::-1, ::-1])[:, ::-1, ::-1]) / 4
    np.testing.assert_allclose(infer(tta=True, grey=True), every_flip, atol=1e-5)
    # TTA's passes are shared out, so a call cuts as many windows as without grey passes;
    # without TTA the grey pass doubles the passes.
    for upright in (False, True):
        assert (compiled.windows_per_call(8, 16, tta=True, upright=upright, grey=True)
                == compiled.windows_per_call(8, 16, tta=True, upright=upright))
    assert compiled.windows_per_call(8, 16, grey=True) * 2 == compiled.windows_per_call(8, 16)


@pytest.mark.parametrize("upright", [False, True])
def test_auto_grey_weighs_the_grey_half_by_how_far_it_disagrees(upright):
    """predict.grey: auto. Per window: d = mean |colour map - grey map|; the grey half weighs
    0.5 * clip((d - lo) / (hi - lo), 0, 1)."""
    model = build_model(load_config().model, depth=2, filters=4)
    rng = np.random.default_rng(5)
    windows = rng.random((6, 16, 16, 3), dtype=np.float32)
    windows[0] = windows[0, ..., :1]  # a grey window: both halves agree, weight 0
    windows[1, ..., 2] *= 0.2  # strongly tinted windows disagree more
    windows[2, ..., 0] = 1.0
    grey = np.repeat((windows @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)

    def plain(x, up_down=False, left_right=False):
        def flip(a):
            return a[:, :: -1 if up_down else 1, :: -1 if left_right else 1]
        return flip(np.asarray(model(flip(x), training=False))[..., 0])

    if upright:
        colour, grey_map = plain(windows), plain(grey, left_right=True)
    else:
        colour = (plain(windows) + plain(windows, up_down=True)) / 2
        grey_map = (plain(grey, left_right=True) + plain(grey, True, True)) / 2
    low, high = compiled.AUTO_GREY_RAMP
    apart = np.abs(colour - grey_map).mean(axis=(1, 2), keepdims=True)
    weight = 0.5 * np.clip((apart - low) / (high - low), 0, 1)
    expected = (1 - weight) * colour + weight * grey_map
    got = np.asarray(compiled.compiled_infer(model, (16, 16), tta=True, upright=upright,
                                              grey="auto")(windows))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    half = np.asarray(compiled.compiled_infer(model, (16, 16), tta=True, upright=upright,
                                               grey=True)(windows))
    np.testing.assert_allclose(half, (colour + grey_map) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="grey must be"):
        compiled.compiled_infer(model, (16, 16), grey="sometimes")


@pytest.mark.parametrize("tta,grey", [(False, "true"), (True, "true"), (True, "auto")])
def test_grey_passes_change_nothing_on_a_grey_photo_and_keep_the_row_channel(image, tta,
                                                                            grey):
    model = build_model(load_config().model, depth=2, filters=4)
    grey_photo = np.repeat(image[..., :1], 3, axis=-1)
    cfg = cfg_with(f"predict.tta={str(tta).lower()}")
    grey_cfg = cfg_with(f"predict.tta={str(tta).lower()}", f"predict.grey={grey}")
    # (auto weighs its halves by how they differ, and its halves differ by their flips too.)
    if grey == "true":
        np.testing.assert_allclose(
            photo.predict_land({16: model}, grey_photo, grey_cfg).land_prob,
            photo.predict_land({16: model}, grey_photo, cfg).land_prob, atol=1e-5)
        coloured = photo.predict_land({16: model}, image, grey_cfg).land_prob
        plain = photo.predict_land({16: model}, image, cfg).land_prob
        assert np.abs(coloured - plain).max() > 1e-4
    # The row channel is a position, not a colour: the grey passes leave it as it is.
    got, _ = photo.predict_scale(row_reader(), image, 16, batch_size=4, tta=tta,
                                     upright=True, grey=grey_cfg.predict.grey)
    expected = np.broadcast_to(np.linspace(0, 1, image.shape[0], dtype=np.float32)[:, None],
                               image.shape[:2])
    np.testing.assert_allclose(got, expected, atol=1e-5)
