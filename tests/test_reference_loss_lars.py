"""``fastcvrl.loss.nt_xent`` and ``fastcvrl.optim.LARS`` against the CVRL reference's own code:
``official/projects/video_ssl/losses/losses.py:contrastive_loss`` and
``official/modeling/optimization/lars.py``.

Runs only where TensorFlow and tf-models-official are installed (``python -m pytest -m reference``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
ref_losses = pytest.importorskip("official.projects.video_ssl.losses.losses")
ref_lars = pytest.importorskip("official.modeling.optimization.lars")

from fastcvrl.loss import nt_xent  # noqa: E402
from fastcvrl.optim import LARS  # noqa: E402

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("n, d, temperature", [(8, 128, 0.1), (16, 32, 0.5)])
def test_nt_xent_equals_contrastive_loss(n, d, temperature):
    rng = np.random.default_rng(n)
    z = rng.normal(size=(2 * n, d)).astype(
        np.float32
    )  # (2N, D): view 1 rows, then view 2 rows, un-normalised
    hidden = tf.Variable(z)
    dummy = tf_keras.Sequential(
        [tf_keras.layers.Dense(1)]
    )  # contrastive_loss sums its kernels' L2 (times 0 here)
    dummy.build((None, 1))
    with tf.GradientTape() as tape:
        out = ref_losses.contrastive_loss(
            hidden,
            num_replicas=1,
            normalize_hidden=True,
            temperature=temperature,
            model=dummy,
            weight_decay=0.0,
        )
    ref_loss = float(out["contrastive_loss"])
    ref_grad = tape.gradient(out["contrastive_loss"], hidden).numpy()

    zt = torch.from_numpy(z).requires_grad_(True)
    loss = nt_xent(zt[:n], zt[n:], temperature)
    loss.backward()
    print(f"N={n} D={d} t={temperature}: reference {ref_loss:.6f}, fastcvrl {loss.item():.6f}")
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(zt.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())


# One small model's variables under the names the reference's Keras layers give them: the reference excludes
# by name (exclude_from_weight_decay=['batch_normalization', 'bias'], the SimCLR/CVRL setting), fastcvrl by
# ndim <= 1; for conv/dense kernels, BN scale/offset and biases the two rules pick the same variables.
SHAPES = {
    "conv3d/kernel": (3, 3, 3, 4, 8),
    "batch_normalization/gamma": (8,),
    "batch_normalization/beta": (8,),
    "dense/kernel": (8, 5),
    "dense/bias": (5,),
}
EXCLUDE = ["batch_normalization", "bias"]


def _torch_tensor(a: np.ndarray) -> torch.Tensor:
    """A fresh torch copy in torch layout (never sharing memory with ``a``: the optimiser works in place)."""
    a = a.transpose(4, 3, 0, 1, 2) if a.ndim == 5 else (a.T if a.ndim == 2 else a)
    return torch.from_numpy(np.array(a, copy=True, order="C"))


def _run_both(steps: int, lr: float, wd: float, eta: float, momentum: float, grad_scale_ref: float = 1.0):
    """``steps`` steps of the reference LARS and of ours on the same weights and gradients (the reference's
    gradients times ``grad_scale_ref``). Returns {name: (reference weight, our weight)} in TF layout."""
    rng = np.random.default_rng(0)
    w0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [
        {k: rng.normal(scale=1e-2, size=s).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(steps)
    ]
    tf_vars = {k: tf.Variable(v.copy(), name=k) for k, v in w0.items()}
    opt = ref_lars.LARS(
        learning_rate=lr, momentum=momentum, weight_decay_rate=wd, eeta=eta, exclude_from_weight_decay=EXCLUDE
    )
    params = {k: torch.nn.Parameter(_torch_tensor(v)) for k, v in w0.items()}
    ours = LARS(list(params.values()), lr, momentum=momentum, weight_decay=wd, eta=eta, trust=True)
    for g in grads:
        opt.apply_gradients([(tf.constant(grad_scale_ref * g[k]), tf_vars[k]) for k in SHAPES])
        for k, p in params.items():
            p.grad = _torch_tensor(g[k])
        ours.step()
    back = {k: p.detach().numpy() for k, p in params.items()}
    return {k: (tf_vars[k].numpy(), _tf_layout(back[k])) for k in SHAPES}, w0


def _tf_layout(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 4, 1, 0) if a.ndim == 5 else (a.T if a.ndim == 2 else a)


def test_lars_steps_equal_reference_with_decay_and_exclusions():
    # weight decay large enough to move the trust ratio; two steps so momentum is exercised
    result, w0 = _run_both(steps=2, lr=0.5, wd=1e-2, eta=1e-3, momentum=0.9)
    worst = 0.0
    for k, (ref, ours) in result.items():
        moved = np.abs(ref - w0[k]).max()
        diff = np.abs(ours - ref).max()
        worst = max(worst, diff / moved)
        assert moved > 0, k
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-5 * moved, err_msg=k)
    print(f"LARS, 2 steps: max |ours - reference| / max |update| = {worst:.2e}")


def test_lars_gradient_scale_note():
    # The reference sums gradients over replicas without dividing the loss by their number: its gradient is
    # R x the mean one. With LARS (weight decay 0) the trust ratio cancels that scale for the adapted kernels,
    # while the excluded variables (BN, biases) move R times further than with the mean gradient.
    r = 8.0
    result, w0 = _run_both(steps=1, lr=0.5, wd=0.0, eta=1e-3, momentum=0.9, grad_scale_ref=r)
    for k, (ref, ours) in result.items():
        if any(e in k for e in EXCLUDE):
            np.testing.assert_allclose(ref - w0[k], r * (ours - w0[k]), rtol=1e-4, atol=1e-7, err_msg=k)
        else:
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7, err_msg=k)
