"""The data path's typed settings: built from the config in one place (``fastcvrl.data``), every ``auto``
resolved, and the recipe the only reader of the per-view switches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("av")  # the loaders import PyAV: absent on a bare GPU image, skip

from dali_pipelines.recipe import Recipe
from dali_pipelines.settings import EvalSettings, PretrainSettings, Runtime
from fastcvrl.config import Config, load_config
from fastcvrl.data import eval_settings, pretrain_settings, recipe, runtime

# data.* key -> where it lands in PretrainSettings (one entry per key the data path takes)
PRETRAIN_KEYS = {
    "num_frames": ("clip", "num_frames", 8),
    "stride": ("clip", "stride", 3),
    "gap_distribution": ("gap", "distribution", "power"),
    "gap_power": ("gap", "power", 2.5),
    "crop_size": ("recipe", "crop_size", 96),
    "flip_prob": ("recipe", "flip_prob", 0.25),
    "color_jitter_prob": ("recipe", "color_jitter_prob", 0.5),
    "grayscale_prob": ("recipe", "grayscale_prob", 0.7),
    "blur": ("recipe", "blur", True),
    "solarize": ("recipe", "solarize", True),
    "num_threads": ("runtime", "num_threads", 5),
    "prefetch": ("runtime", "prefetch", 3),
    "skip_corrupt": ("runtime", "skip_corrupt", False),
    "host_workers": ("runtime", "host_workers", 3),
}


@pytest.mark.parametrize("key", sorted(PRETRAIN_KEYS))
def test_each_data_key_reaches_its_setting(key):
    part, field, value = PRETRAIN_KEYS[key]
    cfg = Config()
    cfg.data.device = "cpu"
    before = getattr(getattr(pretrain_settings(cfg), part), field)
    assert before != value, key  # the test value differs from the default: the change is visible
    setattr(cfg.data, key, value)
    assert getattr(getattr(pretrain_settings(cfg), part), field) == value, key


def test_ranges_and_strengths_map_in_order():
    cfg = Config()
    d = cfg.data
    d.device, d.min_area, d.max_area, d.min_aspect, d.max_aspect = "cpu", 0.2, 0.9, 0.4, 2.5
    d.brightness, d.contrast, d.saturation, d.hue = 0.1, 0.2, 0.3, 0.4
    d.blur_prob, d.solarize_prob = [0.6, 0.4], [0.1, 0.3]
    r = pretrain_settings(cfg).recipe
    assert (r.area, r.aspect, r.strength) == ((0.2, 0.9), (0.4, 2.5), (0.1, 0.2, 0.3, 0.4))
    assert (r.blur_prob, r.solarize_prob) == ((0.6, 0.4), (0.1, 0.3))


def test_runtime_has_no_auto_left():
    cfg = load_config(None, ["--data.device=auto", "--data.augment=auto", "--data.host_workers=-1"])
    rt = runtime(cfg, "cpu")
    want_device = "gpu" if torch.cuda.is_available() else "cpu"
    assert rt.device == want_device and rt.augment in ("dali", "torch") and rt.host_workers >= 0
    assert rt.augment == ("torch" if want_device == "cpu" else "dali")
    assert rt.dtype == torch.float32  # precision auto on the CPU
    cfg.train.precision = "bf16"
    assert runtime(cfg, "cpu").dtype == torch.bfloat16


def test_evaluation_crops_without_colour_at_its_own_size():
    cfg = Config()
    cfg.data.device, cfg.data.crop_size, cfg.eval.crop_size, cfg.data.blur = "cpu", 112, 80, True
    e = eval_settings(cfg)
    assert isinstance(e, EvalSettings) and e.recipe.crop_size == 80 and not e.recipe.color
    assert e.recipe.ops == ("roi_start", "roi_end")  # colour, blur and solarize off: crop and flip only
    assert (e.clip.num_frames, e.clip.stride) == (cfg.eval.num_frames, cfg.eval.stride)
    assert (e.test_clips, e.test_crops, e.test_crop_size) == (
        cfg.eval.test_clips,
        cfg.eval.test_crops,
        cfg.eval.test_crop_size,
    )


@pytest.mark.parametrize("blur, solarize", [(False, False), (True, False), (False, True), (True, True)])
def test_the_recipe_draws_its_ops_in_order(blur, solarize):
    r = Recipe(blur=blur, solarize=solarize, blur_prob=(1.0, 1.0), solarize_prob=(1.0, 1.0))
    want = ["roi_start", "roi_end", "color", "color_order"] + ["sigma"] * blur + ["solarize"] * solarize
    assert list(r.ops) == want
    values = r.draw_view(np.random.default_rng(0), 48, 64, view=1)
    assert len(values) == len(want)
    shapes = dict(zip(r.ops, (np.shape(v) for v in values)))
    assert shapes["roi_start"] == shapes["roi_end"] == (2,) and shapes["color"] == (6,)
    assert shapes["color_order"] == (4,)
    if blur:
        assert 0.1 <= float(values[4]) <= 2.0  # probability 1: a sigma is drawn
    if solarize:
        assert bool(values[-1])


def test_the_recipe_refuses_bad_view_probabilities():
    with pytest.raises(ValueError, match="data.blur_prob"):
        Recipe(blur_prob=(0.5,))
    with pytest.raises(ValueError, match="data.solarize_prob"):
        Recipe(solarize_prob=(0.0, 1.5))


def test_runtime_refuses_unresolved_values():
    for bad in ({"device": "auto"}, {"augment": "auto"}, {"host_workers": -1}):
        with pytest.raises(ValueError):
            Runtime(**bad)


def test_settings_are_frozen():
    s = PretrainSettings(batch_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 4  # type: ignore[misc]


def test_recipe_of_the_config_defaults_is_the_references():
    assert recipe(Config().data) == Recipe()  # the reference's recipe, with blur and solarize off by default
