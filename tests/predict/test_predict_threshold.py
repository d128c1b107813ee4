"""Thresholding on synthetic arrays: GMM split, the revision rule, size independence."""

from __future__ import annotations

import numpy as np
import pytest

from segmenter.config import PostprocessConfig
from segmenter.predict.components import decide_threshold
from segmenter.predict.threshold import water_mask


def two_populations(size: int = 120, water_prob: float = 0.1, land_prob: float = 0.9,
                    seed: int = 0):
    """Left half dark-blue water with low land probability, right half brown land."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), bool)
    truth[:, : size // 2] = True
    image = np.where(truth[..., None], [0.1, 0.2, 0.5], [0.5, 0.4, 0.2]).astype(np.float32)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    prob = np.where(truth, water_prob, land_prob) + rng.normal(0, 0.03, truth.shape)
    return np.clip(prob, 0, 1).astype(np.float32), np.clip(image, 0, 1), truth


def test_gmm_splits_two_populations():
    prob, image, truth = two_populations()
    mask, info = water_mask(prob, image, PostprocessConfig(n_components=3, subsample=5000))
    assert mask.dtype == bool and mask.shape == truth.shape
    assert (mask == truth).mean() > 0.999
    assert info["method"] == "gmm" and not info["revised"] and info["threshold"] == 0.5
    assert info["water_fraction"] == pytest.approx(0.5, abs=0.01)
    assert {c["class"] for c in info["components"]} == {"water", "land"}


def test_revision_rule_fires_when_all_medians_on_one_side(caplog):
    prob, image, truth = two_populations(water_prob=0.6, land_prob=0.95)
    cfg = PostprocessConfig(n_components=2, subsample=5000)
    # debug here: predict and evaluate log it at info, naming the photo
    with caplog.at_level("DEBUG", logger="segmenter.predict"):
        mask, info = water_mask(prob, image, cfg)
    assert info["revised"] is True
    assert 0.6 < info["threshold"] < 0.95
    assert "revised" in caplog.text
    assert (mask == truth).mean() > 0.999
    # a plain threshold of 0.5 would have called everything land
    plain, _ = water_mask(prob, image, PostprocessConfig(method="global"))
    assert plain.mean() < 0.01


def test_revision_rule_does_not_fire_when_medians_straddle():
    prob, image, _ = two_populations(water_prob=0.3, land_prob=0.7)
    _, info = water_mask(prob, image, PostprocessConfig(n_components=2, subsample=5000))
    assert info["revised"] is False and info["threshold"] == 0.5


def test_result_does_not_depend_on_image_size_beyond_subsample():
    prob, image, _ = two_populations(size=100)
    cfg = PostprocessConfig(n_components=3, subsample=4000)
    small, _ = water_mask(prob, image, cfg)
    big, info = water_mask(np.tile(prob, (3, 3)), np.tile(image, (3, 3, 1)), cfg)
    assert info["fitted_on"] == 4000
    assert np.array_equal(big, np.tile(small, (3, 3)))


def test_global_and_otsu():
    prob, image, truth = two_populations(water_prob=0.3, land_prob=0.95)
    mask, info = water_mask(prob, None, PostprocessConfig(method="global", threshold=0.5))
    assert np.array_equal(mask, prob <= 0.5) and info["threshold"] == 0.5
    mask, info = water_mask(prob, None, PostprocessConfig(method="otsu"))
    assert 0.3 < info["threshold"] < 0.95
    assert (mask == truth).mean() > 0.999
    flat, info = water_mask(np.full((8, 8), 0.7, np.float32), None,
                            PostprocessConfig(method="otsu"))
    assert not flat.any()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="does not match"):
        water_mask(np.zeros((4, 4)), np.zeros((5, 4, 3)), PostprocessConfig())
    with pytest.raises(ValueError, match="needs the photo"):
        water_mask(np.zeros((4, 4)), None, PostprocessConfig())


def test_fast_assignment_and_medians_match_scikit_learn_and_numpy(monkeypatch):
    from sklearn.mixture import GaussianMixture

    from segmenter.predict import gmm as gmm_module
    from segmenter.predict.components import component_histogram, medians_from_histogram
    from segmenter.predict.gmm import assign_components, gmm_features

    monkeypatch.setattr(gmm_module, "CHUNK_PIXELS", 1000)  # 20 chunks over the thread pool

    rng = np.random.default_rng(5)
    prob = np.clip(rng.random(20000), 1e-3, 1 - 1e-3).astype(np.float32)
    rgb = rng.random((20000, 3)).astype(np.float32)
    assert np.allclose(gmm_features(prob, rgb)[:, 0], np.log(prob / (1 - prob)), atol=1e-3)
    gmm = GaussianMixture(4, random_state=0).fit(gmm_features(prob, rgb))
    labels = assign_components(gmm, prob, rgb)
    assert (labels == gmm.predict(gmm_features(prob, rgb))).mean() > 0.999
    medians = medians_from_histogram(component_histogram(labels, prob, 5))
    for comp in range(4):
        assert medians[comp] == pytest.approx(np.median(prob[labels == comp]), abs=1e-3)
    assert medians[4] is None


def saturated_shoreline(size: int = 160, seed: int = 0, band: float = 12.0):
    """A trained network's kind of map: probabilities saturated at 0 and 1 away from a wavy
    shoreline, a soft band ``band`` pixels wide across it, and colours that change sharply at
    the true shoreline (blue water, brown land)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = xx - (size / 2 + 10 * np.sin(yy / 17.0))  # > 0: land
    logit = 12.0 * dist / band + rng.normal(0, 1.5, dist.shape)
    prob = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    land_share = np.clip(0.5 + dist / 1.5, 0, 1)[..., None]
    image = (1 - land_share) * np.array([0.15, 0.3, 0.5]) + land_share * np.array([0.5, 0.45, 0.3])
    image = image + rng.normal(0, 0.05, image.shape)
    return prob, np.clip(image, 0, 1).astype(np.float32), dist < 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gmm_not_worse_than_global_on_saturated_map(seed):
    """Saturated probabilities used to give two spike components and one catch-all component
    of the shoreline band called by a median near 0.5 (IoU 0.95 against 0.986 for 0.5)."""
    from segmenter.metrics import scores

    prob, image, truth = saturated_shoreline(seed=seed)
    plain, _ = water_mask(prob, image, PostprocessConfig(method="global"))
    mask, info = water_mask(prob, image, PostprocessConfig(subsample=20000))
    assert scores(mask, truth)["water_iou"] >= scores(plain, truth)["water_iou"] - 0.005
    assert info["threshold"] == 0.5 and not info["revised"]
    # Every component is called as a whole (min_purity 0), so a water component's purity times
    # its pixels counts its pixels with p <= 0.5, a land one's those with p > 0.5: summed per
    # class, they are the pixels where the mask agrees with the plain threshold.
    components = info["components"]
    assert {c["class"] for c in components} == {"water", "land"}
    for side, pixels in (("water", mask & plain), ("land", ~mask & ~plain)):
        called = [c for c in components if c["class"] == side]
        assert sum(c["pixels"] for c in called) == (mask if side == "water" else ~mask).sum()
        # purities are rounded to 4 decimals
        assert sum(c["purity"] * c["pixels"] for c in called) == pytest.approx(
            pixels.sum(), abs=1e-4 * prob.size)


def test_component_purity():
    from segmenter.predict.components import component_histogram, purity_from_histogram

    labels = np.array([0, 0, 0, 0, 1, 1], np.int16)
    prob = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.6], np.float32)
    histogram = component_histogram(labels, prob, 3)
    purity = purity_from_histogram(histogram, np.array([True, False, True]), 0.5)
    assert purity == [0.75, 0.5, None]


def test_mask_clean_up_fills_glints_and_drops_specks():
    from segmenter.predict.threshold import clean_mask

    prob = np.ones((100, 100), np.float32)  # land
    prob[10:60, 10:60] = 0.0  # a pond ...
    prob[30:32, 30:32] = 1.0  # ... with a 4-pixel glint
    prob[90, 90] = 0.0  # a 1-pixel dark speck on land
    cfg = PostprocessConfig(method="global")
    raw, info = water_mask(prob, None, cfg)
    assert not raw[30, 30] and raw[90, 90] and "cleaned" not in info
    cleaned, info = water_mask(
        prob, None, cfg.model_copy(update={"fill_holes": 0.001, "remove_specks": 0.001})
    )
    assert cleaned[30, 30] and not cleaned[90, 90]
    assert info["cleaned"] == {"specks_removed_px": 1, "holes_filled_px": 4}
    assert info["water_fraction"] == pytest.approx(2500 / 10000)
    # Regions above the area stay: the pond is 2 500 px, far above 0.1 % of the photo.
    big, _ = clean_mask(cleaned, 0.0, 0.3)
    assert not big.any()  # ... unless the area says otherwise
    same, stats = clean_mask(raw, 0.0, 0.0)
    assert same is raw and stats == {}


def test_gmm_subsample_follows_the_photo_size():
    from segmenter.predict.gmm import subsample_size

    cfg = PostprocessConfig()  # share 0.05, at least 20 000, at most 200 000
    assert subsample_size(560_000, cfg) == 28_000
    assert subsample_size(100_000, cfg) == 20_000
    assert subsample_size(25_000_000, cfg) == 200_000
    assert subsample_size(560_000, PostprocessConfig(subsample_share=None)) == 200_000
    prob, image, _ = two_populations(size=300)
    _, info = water_mask(prob, image, PostprocessConfig(n_components=3,
                                                        subsample_min=1000))
    assert info["fitted_on"] == 4500


@pytest.mark.parametrize(("prob", "water"), [(0.97, False), (0.02, True)])
def test_a_photo_the_models_are_sure_of_stays_one_class(prob, water):
    """An inland photo (or open sea): every component sure of one class is not split in two."""
    rng = np.random.default_rng(3)
    land_prob = np.clip(prob + rng.normal(0, 0.005, (60, 80)), 0.001, 0.999).astype(np.float32)
    image = rng.random((60, 80, 3), dtype=np.float32)  # many colours: several components
    mask, info = water_mask(land_prob, image, PostprocessConfig(subsample=5000, one_class=0.2))
    assert info["revised"] is False and info["one_class"] == ("water" if water else "land")
    assert (mask == water).all()
    # The notebook's rule (one_class 0) splits the same photo at the mean of the medians.
    mask, info = water_mask(land_prob, image, PostprocessConfig(subsample=5000, one_class=0.0))
    assert info["revised"] is True and info["one_class"] is None
    assert 0.05 < mask.mean() < 0.95


@pytest.mark.parametrize(("medians", "expected"), [
    # Every median on the land side: the mean (0.8) is capped at 1 - 0.35, so the components the
    # models are sure of (0.9, 0.95) stay land and only the unsure one (0.55) turns to water.
    ([0.55, 0.9, 0.95], (0.65, True, None)),
    # The mean is inside the bound: the notebook's revision, unchanged.
    ([0.52, 0.6, 0.7], (0.6066666666666667, True, None)),
    # Every median beyond the bound: all land, no revision.
    ([0.7, 0.9, 0.95], (0.5, False, "land")),
    # The water side mirrors it: the mean (0.2) is raised to 0.35.
    ([0.05, 0.1, 0.45], (0.35, True, None)),
    ([0.05, 0.1, 0.3], (0.5, False, "water")),
    # Both sides present: the configured threshold.
    ([0.1, 0.9], (0.5, False, None)),
])
def test_the_revision_never_passes_the_bound_the_models_are_sure_of(medians, expected):
    threshold, revised, one_class = decide_threshold(medians, PostprocessConfig(one_class=0.35))
    assert (round(threshold, 6), revised, one_class) == (round(expected[0], 6), *expected[1:])


def test_a_bounded_revision_rescues_unsure_water_and_keeps_sure_dark_land():
    """Land sure (0.97), dark shrubs the models lean land on (0.75), pale water they barely
    call land (0.55): the notebook's revision takes the shrubs too, the bounded one does not."""
    rng = np.random.default_rng(5)
    kind = np.zeros((90, 90), np.int8)
    kind[:, 30:60], kind[:, 60:] = 1, 2          # 0 land, 1 shrubs, 2 water
    prob = np.choose(kind, [0.97, 0.75, 0.55]) + rng.normal(0, 0.01, kind.shape)
    colour = np.array([[0.6, 0.5, 0.3], [0.1, 0.15, 0.1], [0.5, 0.5, 0.45]], np.float32)
    image = colour[kind] + rng.normal(0, 0.01, (90, 90, 3))
    prob, image = prob.astype(np.float32), np.clip(image, 0, 1).astype(np.float32)
    cfg = {"n_components": 3, "subsample": 5000}
    notebook, _ = water_mask(prob, image, PostprocessConfig(**cfg, one_class=0.0))
    assert notebook[kind == 1].all() and notebook[kind == 2].all()
    bounded, info = water_mask(prob, image, PostprocessConfig(**cfg, one_class=0.35))
    assert info["revised"] and info["threshold"] == pytest.approx(0.65)
    assert bounded[kind == 2].all() and not bounded[kind < 2].any()


def night_scene(size: int = 60, seed: int = 1):
    """Sky above, water below, both one dark grey: the network tells them apart (land
    probability 0.9 above, 0.1 below), their colour does not."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), bool)
    truth[size * 3 // 5 :] = True  # water: the lower 40 %
    image = np.full((size, size, 3), 0.12, np.float32) + rng.normal(0, 0.01, (size, size, 3))
    prob = np.where(truth, 0.1, 0.9) + rng.normal(0, 0.02, truth.shape)
    return np.clip(prob, 0, 1).astype(np.float32), np.clip(image, 0, 1).astype(np.float32), truth


def test_a_component_that_mixes_both_sides_is_called_pixel_by_pixel():
    prob, image, truth = night_scene()
    # One colour cluster holds sky and water: called as a whole by its median, all is land.
    notebook, info = water_mask(prob, image, PostprocessConfig(n_components=1))
    assert not notebook.any() and info["components"][0]["class"] == "land"
    assert info["components"][0]["purity"] == pytest.approx(0.6, abs=0.01)
    # min_purity: the cluster is mixed (60 % of its pixels agree), so each pixel's own
    # probability decides.
    mask, info = water_mask(prob, image, PostprocessConfig(n_components=1, min_purity=0.7))
    assert np.array_equal(mask, truth)
    assert info["components"][0]["class"] == "per pixel" and info["min_purity"] == 0.7
    # Clusters that agree with the network are still called by colour, as a whole.
    prob2, image2, _ = two_populations()
    cfg = PostprocessConfig(n_components=3, subsample=5000)
    pure, _ = water_mask(prob2, image2, cfg)
    kept, info = water_mask(prob2, image2, cfg.model_copy(update={"min_purity": 0.7}))
    assert np.array_equal(pure, kept)
    assert {c["class"] for c in info["components"]} == {"water", "land"}


def test_several_mixtures_call_each_pixel_by_their_majority():
    """n_components as a list: one mixture per count, each pixel called by their majority."""
    prob, image, truth = night_scene()
    singles = {k: water_mask(prob, image, PostprocessConfig(n_components=k))[0]
               for k in (1, 2, 3)}
    # one component holds sky and water and is called land as a whole; two or three split
    assert not singles[1].any() and np.array_equal(singles[2], truth)
    mask, info = water_mask(prob, image, PostprocessConfig(n_components=[1, 2, 3]))
    majority = (singles[1].astype(int) + singles[2] + singles[3]) >= 2
    np.testing.assert_array_equal(mask, majority)
    np.testing.assert_array_equal(mask, truth)  # the first mixture alone was all land
    assert info["method"] == "gmm" and info["vote"] == "majority"
    assert [m["n_components"] for m in info["mixtures"]] == [1, 2, 3]
    assert info["mixtures"][0]["components"][0]["class"] == "land"
    assert info["threshold"] == 0.5 and info["revised"] is False
    assert info["water_fraction"] == pytest.approx(truth.mean())
    # one count in a list is the plain mixture, reported as before
    alone, info = water_mask(prob, image, PostprocessConfig(n_components=[2]))
    np.testing.assert_array_equal(alone, singles[2])
    assert "mixtures" not in info and len(info["components"]) == 2


def test_a_mixture_capped_by_max_iter_is_used_without_a_warning(caplog):
    """max_iter caps EM on purpose: no scikit-learn ConvergenceWarning (a source line on the
    user's terminal per photo), a debug line instead, and the mask is still made."""
    import logging
    import warnings

    prob, image, truth = night_scene()
    with warnings.catch_warnings(record=True) as caught, \
            caplog.at_level(logging.DEBUG, logger="segmenter.predict"):
        warnings.simplefilter("always")
        mask, info = water_mask(prob, image, PostprocessConfig(n_components=[2, 3], max_iter=1))
    assert [str(w.message) for w in caught if "converge" in str(w.message)] == []
    assert "GMM of 2 components: not converged in 1 EM steps" in caplog.text
    assert mask.shape == truth.shape and [m["n_components"] for m in info["mixtures"]] == [2, 3]


def test_tol_stops_em_earlier():
    """postprocess.tol is the EM's stopping tolerance: a loose one stops after fewer steps."""
    from segmenter.predict.gmm import fit_mixtures, gmm_features

    prob, image, _ = night_scene()
    features = gmm_features(prob.reshape(-1), image.reshape(-1, 3))
    steps = {tol: fit_mixtures(features, [4], PostprocessConfig(tol=tol))[0].n_iter_
             for tol in (1e-6, 0.5)}
    assert steps[0.5] < steps[1e-6]
    with pytest.raises(ValueError, match="tol"):
        PostprocessConfig(tol=0)


def test_majority_vote_breaks_ties_by_the_pixels_own_probability():
    from segmenter.predict.gmm import majority_water

    votes = np.array([0, 1, 2, 3], np.uint8)
    prob = np.array([0.1, 0.3, 0.7, 0.9], np.float32)
    assert majority_water(votes, 3, prob, 0.5).tolist() == [False, False, True, True]
    assert majority_water(votes[:2], 1, prob[:2], 0.5).tolist() == [False, True]
    # two mixtures: one vote each way is a tie, called by the probability of land
    tied = np.array([0, 1, 1, 2], np.uint8)
    assert majority_water(tied, 2, prob, 0.5).tolist() == [False, True, False, True]
    assert majority_water(tied, 2, prob, 0.8).tolist() == [False, True, True, True]


def nearly_mixed_scene(size: int = 100, seed: int = 3):
    """One grey colour cluster: 72 % land (0.9), 20 % water the network is sure of (0.1) and
    8 % water it is unsure of (0.45), so 72 % of the cluster agrees with its call, land."""
    rng = np.random.default_rng(seed)
    rows = np.arange(size)[:, None].repeat(size, 1)
    sure = rows < size * 20 // 100
    unsure = (rows >= size * 20 // 100) & (rows < size * 28 // 100)
    prob = np.where(sure, 0.1, np.where(unsure, 0.45, 0.9)).astype(np.float32)
    image = np.full((size, size, 3), 0.3, np.float32) + rng.normal(0, 0.01, (size, size, 3))
    return prob, np.clip(image, 0, 1).astype(np.float32), sure, unsure


def test_purity_ramp_keeps_sure_pixels_of_a_nearly_mixed_component():
    prob, image, sure, unsure = nearly_mixed_scene()
    hard = PostprocessConfig(n_components=1, min_purity=0.7)
    # Above min_purity with a hard cut: the whole cluster is land, sure water and all.
    mask, info = water_mask(prob, image, hard)
    assert not mask.any() and info["components"][0]["class"] == "land"
    assert info["components"][0]["purity"] == pytest.approx(0.72, abs=0.005)
    # A ramp of 0.1: weight (0.8 - 0.72) / 0.1 = 0.8 for the pixels' own probability, so the
    # sure water (0.2 + 0.8 * 0.1 <= 0.5) keeps its call, the unsure (0.2 + 0.8 * 0.45) follows
    # its colour cluster, land stays land.
    mask, info = water_mask(prob, image, hard.model_copy(update={"purity_ramp": 0.1}))
    np.testing.assert_array_equal(mask, sure)
    component = info["components"][0]
    assert component["class"] == "land, blended"
    assert component["pixel_weight"] == pytest.approx(0.8, abs=0.01)
    assert info["purity_ramp"] == 0.1
    # Past the ramp's top the component is called as a whole again.
    mask, info = water_mask(prob, image, PostprocessConfig(n_components=1, min_purity=0.6,
                                                           purity_ramp=0.1))
    assert not mask.any() and info["components"][0]["class"] == "land"


def test_pixel_weights_run_from_per_pixel_to_whole_across_the_ramp():
    from segmenter.predict.components import pixel_weights

    purities = [0.5, 0.7, 0.75, 0.8, 0.95, None]
    np.testing.assert_allclose(pixel_weights(purities, 0.7, 0.1), [1, 1, 0.5, 0, 0, 0],
                               atol=1e-6)
    # No ramp: the hard cut, per pixel strictly below min_purity.
    np.testing.assert_array_equal(pixel_weights(purities, 0.7), [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(pixel_weights(purities, 0.0, 0.1), [0, 0, 0, 0, 0, 0])
