"""The augmentation rules against slow, obvious NumPy statements: the crop sampler (TF's
``sample_distorted_bounding_box`` rule), the reference's colour jitter in the DALI graph and in torch, blur
and solarize. (``test_reference_recipe.py`` checks the NumPy statements against TensorFlow itself.)"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def  # noqa: E402

stats = pytest.importorskip("scipy.stats")

from dali_pipelines import recipe, recipe_graph, spatial, torch_augment


# ------------------------------------------------------------------------------------------ crop sampler
def _slow_attempt(height, width, r, u_height, u_y, u_x, area=(0.3, 1.0), min_covered=0.1):
    """One attempt of TF's GenerateRandomCrop, line by line in scalars (``None``: the attempt fails)."""
    f32 = np.float32  # TF's kernel computes in float (double for the width cap)
    r = f32(r)
    total = height * width
    lo, hi = f32(area[0]) * f32(width) * f32(height), f32(area[1]) * f32(width) * f32(height)
    h = int(np.rint(np.sqrt(lo / r)))
    hmax = int(np.rint(np.sqrt(hi / r)))
    if np.rint(f32(hmax) * r) > width:
        hmax = int((width + 0.5 - float(f32(1e-7))) / float(r))
        if np.rint(f32(hmax) * r) > width:
            hmax -= 1
    hmax = min(hmax, height)
    h = min(h, hmax)
    if h < hmax:
        h += int(u_height * (hmax - h + 1))
    w = int(np.rint(f32(h) * r))
    if f32(w * h) < lo:
        h += 1
        w = int(np.rint(f32(h) * r))
    if f32(w * h) > hi:
        h -= 1
        w = int(np.rint(f32(h) * r))
    if (
        f32(w * h) < lo
        or f32(w * h) > hi
        or w > width
        or h > height
        or w <= 0
        or h <= 0
        or w * h < min_covered * total
    ):
        return None
    y = int(u_y * (height - h)) if h < height else 0
    x = int(u_x * (width - w)) if w < width else 0
    return [y, x, y + h, x + w]


def _slow_sampler(rng, height, width, area=(0.3, 1.0), aspect=(0.5, 2.0), attempts=100):
    """TF's sampler: up to ``attempts`` attempts, the first that fits, else the whole frame. The uniforms are
    drawn as the fast path draws them (one ``(attempts, 4)`` call: aspect, height, y, x per attempt)."""
    u = rng.random((attempts, 4))
    for u_aspect, u_height, u_y, u_x in u:
        f32 = np.float32  # TF: RandFloat() * (max - min) + min, in float
        r = f32(u_aspect) * f32(aspect[1] - aspect[0]) + f32(aspect[0])
        box = _slow_attempt(height, width, float(r), u_height, u_y, u_x, area)
        if box is not None:
            return box
    return [0, 0, height, width]


@pytest.mark.parametrize("size", [(256, 340), (240, 320), (112, 112), (340, 256), (20, 30)])
def test_crop_attempts_equal_the_slow_statement(size):
    rng = np.random.default_rng(0)
    u = rng.random((3000, 4))
    r = (0.5 + 1.5 * u[:, 0]).astype(np.float32)
    for i in range(len(u)):
        want = _slow_attempt(*size, float(r[i]), u[i, 1], u[i, 2], u[i, 3])
        assert spatial.crop_attempt(*size, float(r[i]), *u[i, 1:].tolist()) == want, (i, r[i])


@pytest.mark.parametrize(
    "size,area,aspect,attempts",
    [
        ((256, 340), (0.3, 1.0), (0.5, 2.0), 100),
        ((20, 30), (0.3, 1.0), (0.5, 2.0), 100),
        ((50, 50), (0.6, 1.0), (1.5, 3.0), 10),
    ],
)
def test_crop_sampler_equals_the_slow_statement_draw_for_draw(size, area, aspect, attempts):
    """Same generator state, same boxes (in the last case about 1 attempt in 9 fits: views take several
    attempts and about a third fall back to the whole frame)."""
    fast_rng, slow_rng = np.random.default_rng(10), np.random.default_rng(10)
    whole = 0
    for _ in range(500):
        got = spatial.random_resized_crop(fast_rng, *size, area, aspect, attempts)
        assert got.dtype == np.float32 and got.tolist() == _slow_sampler(
            slow_rng, *size, area, aspect, attempts
        )
        whole += got.tolist() == [0, 0, *size]
    assert (whole > 50) == (attempts == 10)


def test_crop_sampler_is_distributed_as_the_slow_statement():
    h, w, n = 256, 340, 4000
    rng = np.random.default_rng(1)
    fast = np.stack([spatial.random_resized_crop(rng, h, w) for _ in range(n)]).astype(np.float64)
    slow = np.array([_slow_sampler(rng, h, w) for _ in range(n)], np.float64)
    for f in (
        lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
        lambda b: (b[:, 3] - b[:, 1]) / (b[:, 2] - b[:, 0]),
        lambda b: b[:, 0],
        lambda b: b[:, 1],
    ):
        assert stats.ks_2samp(f(fast), f(slow)).pvalue > 1e-3
    hgt, wid = fast[:, 2] - fast[:, 0], fast[:, 3] - fast[:, 1]
    assert (fast[:, :2] >= 0).all() and (fast[:, 2] <= h).all() and (fast[:, 3] <= w).all()
    assert ((hgt * wid) >= 0.3 * h * w).all()
    # the aspect ratio is uniform in [0.5, 2] (not log-uniform): half the crops are wider than 1.25
    assert abs(np.mean(wid / hgt > 1.25) - 0.5) < 0.03


def test_crop_sampler_falls_back_to_the_whole_frame():
    rng = np.random.default_rng(2)  # an aspect of 3-4 cannot cover 90% of a square frame
    box = spatial.random_resized_crop(rng, 50, 50, area=(0.9, 1.0), aspect=(3.0, 4.0))
    assert box.tolist() == [0, 0, 50, 50]


# ------------------------------------------------------------------------------------------ colour
def _clips(rng):
    """Random clips, clips with tied channels and grey pixels, a smooth colour ramp."""
    out = [rng.random((2, 10, 12, 3)) for _ in range(12)]
    tied = rng.random((2, 10, 12, 3))
    tied[..., 2] = tied[..., 0]
    tied[:, :3] = tied[:, :3, :, :1]
    yy, xx = np.mgrid[0:10, 0:12] / 12.0
    return out + [tied, np.stack([xx, yy, 1 - xx], -1)[None].repeat(2, 0)]


def _draws(rng, clips, per_clip=6):
    return [
        (c, *recipe.color_params(rng, 0.9, (0.8, 0.8, 0.8, 0.2), 0.3)) for c in clips for _ in range(per_clip)
    ]


def test_colour_params_follow_the_reference_ranges():
    rng = np.random.default_rng(3)
    draws = [recipe.color_params(rng) for _ in range(4000)]
    p = np.stack([d[0] for d in draws])
    on = p[:, 0] == 1
    assert abs(on.mean() - 0.8) < 0.03 and abs(p[:, 5].mean() - 0.2) < 0.03
    for k, (lo, hi) in enumerate([(0.2, 1.8)] * 3 + [(-0.2, 0.2)], start=1):
        assert stats.kstest((p[on, k] - lo) / (hi - lo), "uniform").pvalue > 1e-3
    assert (p[~on, 1:4] == 1).all() and (p[~on, 4] == 0).all()
    orders = np.stack([d[1] for d in draws])
    assert (np.sort(orders, 1) == np.arange(4)).all()
    assert len({tuple(o) for o in orders.tolist()}) == 24  # every order occurs


def test_numpy_statement_is_what_it_says():
    """Hand-checked cases: contrast keeps the clip mean, saturation 0 is the HSV grey (the max channel), a hue
    turn of 1/3 sends red to green, the clip after brightness."""
    red = np.zeros((1, 1, 2, 3))
    red[..., 0] = [[0.8, 0.4]]
    hue = spatial.apply_color_reference(red, np.array([1, 1, 1, 1, 1 / 3, 0]), np.array([3, 0, 1, 2]))
    assert np.allclose(hue[..., 1], red[..., 0]) and np.allclose(hue[..., [0, 2]], 0)
    x = np.random.default_rng(4).random((2, 4, 4, 3))
    sat0 = spatial.apply_color_reference(x, np.array([1, 1, 1, 0, 0, 0]), np.arange(4))
    assert np.allclose(sat0, x.max(-1, keepdims=True).repeat(3, -1))
    con = spatial.apply_color_reference(x, np.array([1, 1, 0.5, 1, 0, 0]), np.arange(4))
    assert np.allclose(con.reshape(-1, 3).mean(0), x.reshape(-1, 3).mean(0))
    bright = spatial.apply_color_reference(x, np.array([1, 1.8, 1, 1, 0, 0]), np.arange(4))
    assert bright.max() == 1.0 and np.allclose(bright, np.minimum(x * 1.8, 1))


def test_torch_colour_jitter_matches_the_numpy_statement():
    rng = np.random.default_rng(5)
    worst = 0.0
    for clip, params, order in _draws(rng, _clips(rng)):
        x = torch.from_numpy(clip).float().permute(0, 3, 1, 2)  # (T, 3, H, W)
        got = torch_augment.color_jitter(x, params, order).permute(0, 2, 3, 1).double().numpy()
        worst = max(worst, float(np.abs(got - spatial.apply_color_reference(clip, params, order)).max()))
    assert worst < 1e-5


def test_torch_colour_jitter_in_parts_and_reused_buffers_matches_the_numpy_statement(monkeypatch):
    """The HSV ops a few frames at a time (two here, so that small clips split unevenly), on clips of two
    sizes one after the other (the work buffers are kept between calls): every op order (saturation and hue
    adjacent or not), the input untouched."""
    assert torch_augment._frames_per_part(torch.empty(16, 3, 112, 112)) < 16
    monkeypatch.setattr(torch_augment, "_frames_per_part", lambda x: 2)
    rng = np.random.default_rng(9)
    worst = 0.0
    for k, order in enumerate(itertools.permutations(range(4))):
        clip = rng.random((5, 20, 24, 3)) if k % 2 else rng.random((3, 16, 12, 3))
        params, _ = recipe.color_params(rng, 1.0, (0.8, 0.8, 0.8, 0.2), 0.0)
        x = torch.from_numpy(clip).float().permute(0, 3, 1, 2)  # (T, 3, H, W)
        before = x.clone()
        got = torch_augment.color_jitter(x, params, np.array(order)).permute(0, 2, 3, 1).double().numpy()
        assert torch.equal(x, before)
        worst = max(
            worst, float(np.abs(got - spatial.apply_color_reference(clip, params, np.array(order))).max())
        )
    assert worst < 1e-5


def _run_dali(graph, columns, layouts):
    @pipeline_def(enable_conditionals=True, batch_size=len(columns[0]), num_threads=1, device_id=None)
    def pipe():
        ins = fn.external_source(source=lambda: columns, num_outputs=len(columns), batch=True, layout=layouts)
        return graph(*ins)

    return [np.array(t) for t in pipe().run()[0]]


def test_dali_colour_jitter_matches_the_numpy_statement():
    rng = np.random.default_rng(6)
    draws = _draws(rng, _clips(rng), per_clip=3)
    clips, params, orders = ([d[i] for d in draws] for i in range(3))
    got = _run_dali(
        lambda x, p, o: recipe_graph.color(x, p, o, p),
        [[c.astype(np.float32) for c in clips], params, orders],
        ["FHWC", "", ""],
    )
    worst = max(
        float(np.abs(g - spatial.apply_color_reference(c, p, o)).max())
        for g, c, p, o in zip(got, clips, params, orders)
    )
    assert worst < 1e-5


@pytest.mark.parametrize("size", [24, 40])
def test_blur_in_dali_and_torch_matches_the_numpy_statement(size):
    rng = np.random.default_rng(7)
    clips = [rng.random((2, size, size, 3)).astype(np.float32) for _ in range(3)]
    sigmas = [np.float32(s) for s in (0.1, 0.9, 2.0)]
    got = _run_dali(lambda x, s: recipe_graph.blur(x, s, size), [clips, sigmas], ["FHWC", ""])
    window = recipe.blur_window(size)
    for g, c, s in zip(got, clips, sigmas):
        want = spatial.blur_reference(c, float(s), window)
        assert np.abs(g - want).max() < 1e-5
        t = torch_augment._blur(torch.from_numpy(c).permute(0, 3, 1, 2), float(s), window)
        assert np.abs(t.permute(0, 2, 3, 1).numpy() - want).max() < 1e-5
    assert recipe.blur_window(224) == 23 and recipe.blur_window(112) == 11


def test_color_normalize_applies_colour_blur_solarize_in_order():
    """The torch twin end to end on a uint8 clip: colour, blur, solarize, clip, then normalisation."""
    rng = np.random.default_rng(8)
    clip = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    params, order = recipe.color_params(rng, 1.0)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = torch.empty(3, 2, 24, 24)
    torch_augment.color_normalize(
        torch.from_numpy(clip).permute(0, 3, 1, 2),
        params,
        order,
        mean,
        std,
        out,
        1.3,
        True,
        recipe.blur_window(24),
    )
    x = spatial.apply_color_reference(clip / 255.0, params, order)
    x = np.clip(spatial.solarize_reference(spatial.blur_reference(x, 1.3, recipe.blur_window(24))), 0, 1)
    want = (x - np.array(mean)) / np.array(std)
    assert np.abs(out.permute(1, 2, 3, 0).numpy() - want).max() < 1e-4


def test_per_view_probabilities_are_checked_and_used(tmp_path):
    from dali_videos import make_static_video

    from dali_pipelines.host import PretrainSource
    from dali_pipelines.manifest import read_manifest
    from fastcvrl.config import DataConfig

    with pytest.raises(ValueError, match="data.blur_prob"):
        PretrainSource([object()], 1, DataConfig(blur=True, blur_prob=[1.0]))
    with pytest.raises(ValueError, match="data.solarize_prob"):
        PretrainSource([object()], 1, DataConfig(solarize=True, solarize_prob=[0.0, 1.5]))
    make_static_video(tmp_path / "s.avi", 24)
    (tmp_path / "manifest.csv").write_text(
        "path,label,num_frames,fps,width,height,codec\ns.avi,0,24,25.0,64,48,mjpeg\n"
    )
    cfg = DataConfig(
        num_frames=4, stride=2, blur=True, blur_prob=[0.0, 1.0], solarize=True, solarize_prob=[1.0, 0.0]
    )
    src = PretrainSource(read_manifest(tmp_path / "manifest.csv"), 1, cfg)
    for epoch in range(
        5
    ):  # columns per view: roi_start, roi_end, colour params, colour order, sigma, solarize
        src.set_epoch(epoch)
        cols = src.sample(0).columns
        assert float(cols[8]) == 0.0 and bool(cols[9]) and float(cols[14]) > 0.0 and not bool(cols[15])
