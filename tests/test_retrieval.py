"""Video retrieval: Recall@k's fast path against its loop reference and a hand-counted case, and the command
on the synthetic motion set, where a backbone trained on the training videos retrieves well above a random
one."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastcvrl.eval.retrieval import RECALL_KS, recall_at_k, recall_at_k_reference


@pytest.mark.parametrize("ng,chunk", [(40, 1024), (40, 3), (7, 5)])  # several chunks; k > gallery is capped
def test_recall_fast_matches_reference(ng, chunk):
    g = torch.Generator().manual_seed(ng + chunk)
    gallery = torch.randn(ng, 6, generator=g) * 3  # not normalised: recall_at_k must normalise itself
    gallery_labels = torch.randint(0, 5, (ng,), generator=g)
    queries = torch.randn(23, 6, generator=g)
    query_labels = torch.randint(0, 5, (23,), generator=g)
    ks = (1, 2, 5, 10, 20)
    fast = recall_at_k(queries, query_labels, gallery, gallery_labels, ks, chunk_size=chunk)
    ref = recall_at_k_reference(queries, query_labels, gallery, gallery_labels, ks)
    assert fast.keys() == ref.keys() == set(ks)
    for k in ks:
        assert fast[k] == pytest.approx(ref[k], abs=1e-6), k
    assert all(fast[a] <= fast[b] for a, b in zip(ks, ks[1:]))  # recall never falls as k grows


def _unit(deg: float) -> list[float]:
    a = torch.deg2rad(torch.tensor(deg))
    return [float(torch.cos(a)), float(torch.sin(a))]


def test_recall_counts_a_query_correct_from_its_first_same_label_neighbour():
    # gallery on the unit circle at 0, 10, 20, 30, 40 degrees with labels 0, 1, 1, 2, 0
    gallery = torch.tensor([_unit(d) for d in (0, 10, 20, 30, 40)])
    gallery_labels = torch.tensor([0, 1, 1, 2, 0])
    # query A at 1 deg, label 0: nearest is 0 deg (label 0) -> correct at k=1
    # query B at 29 deg, label 0: order 30 (2), 20 (1), 40 (0) -> first correct at k=3
    # query C at 5 deg, label 3: no gallery video has label 3 -> never correct
    queries = torch.tensor([_unit(1), _unit(29), _unit(5)])
    query_labels = torch.tensor([0, 0, 3])
    rec = recall_at_k(queries, query_labels, gallery, gallery_labels, (1, 2, 3, 5, 20))
    assert rec == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 5: 2 / 3, 20: 2 / 3})
    assert recall_at_k_reference(queries, query_labels, gallery, gallery_labels, (1, 2, 3, 5, 20)) == rec


def test_recall_refuses_mismatched_shapes_and_an_empty_gallery():
    with pytest.raises(ValueError, match="features"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(2), torch.zeros(4, 5), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one gallery"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(2), torch.zeros(0, 3), torch.zeros(0))
    nan = recall_at_k(torch.zeros(0, 3), torch.zeros(0), torch.ones(4, 3), torch.zeros(4))
    assert all(v != v for v in nan.values())  # no queries: NaN, not a made-up 0 or 1


# ------------------------------------------------------------------------- the command on the synthetic set
RETRIEVAL = [
    "--model.arch=r3d_tiny",
    "--data.device=cpu",
    "--data.num_threads=1",
    "--data.flip_prob=0",  # the synthetic classes come in mirror pairs (move_left / move_right)
    "--eval.num_frames=8",
    "--eval.stride=2",
    "--eval.crop_size=48",
    "--eval.short_side=48",
    "--eval.test_crop_size=48",
    "--eval.batch_size=8",
    "--eval.test_clips=2",
    "--eval.test_crops=1",
]


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory):
    """4 motion classes (right, left, down, up), 6 training and 4 test videos each, 48 x 48, 32 frames."""
    from fastcvrl.datasets.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("motion") / "d"
    return ensure_synthetic(
        root, num_classes=4, videos_per_class=6, test_videos_per_class=4, size=48, num_frames=32, workers=1
    )


def _trained_backbone(cfg, train_manifest: str, seed: int) -> nn.Module:
    """r3d_tiny trained with the labels on the training videos (3 augmented passes decoded once, then 120
    Adam steps on them, a few seconds on a CPU): a stand-in for a pretrained backbone whose features hold
    the classes, to check that retrieval reads them."""
    from fastcvrl.data import build_linear_loader
    from fastcvrl.model import build_backbone

    loader = build_linear_loader(cfg, train_manifest, device="cpu", train=True, seed=seed)
    batches = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches += [(clip, label) for clip, label in loader]
    torch.manual_seed(seed)
    backbone = build_backbone("r3d_tiny").train()
    head = nn.Linear(backbone.out_dim, 4)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(120):
        clip, label = batches[int(torch.randint(len(batches), (1,), generator=g))]
        loss = F.cross_entropy(head(backbone(clip)), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return backbone


@pytest.mark.slow
def test_retrieval_command_trained_backbone_well_above_random(motion_set, tmp_path):
    from fastcvrl.config import load_config
    from fastcvrl.eval.evaluate import main

    train_m, test_m = motion_set
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums on every machine
    try:
        backbone = _trained_backbone(load_config(None, RETRIEVAL), train_m, seed=1)
    finally:
        torch.set_num_threads(threads)
    sd = backbone.state_dict()
    ck = tmp_path / "backbone.pt"
    torch.save(
        {"arch": "r3d_tiny", "width": 1, "out_dim": backbone.out_dim, "step": 120, "state_dict": sd}, ck
    )
    common = ["--retrieval", "--train-manifest", train_m, "--test-manifest", test_m, *RETRIEVAL]
    trained = main(["--checkpoint", str(ck), "--out", str(tmp_path / "trained"), *common])
    random = main(["--random-init", "--seed", "1", "--out", str(tmp_path / "random"), *common])
    for res, out in ((trained, "trained"), (random, "random")):
        saved = json.loads((tmp_path / out / "eval.json").read_text())
        assert saved["mode"] == "retrieval" and saved["num_queries"] == 16 and saved["num_gallery"] == 24
        assert saved["views_per_video"] == 2 and saved["recall@1"] == res["recall@1"]
        recalls = [saved[f"recall@{k}"] for k in RECALL_KS]
        assert recalls == sorted(recalls) and all(abs(r * 16 - round(r * 16)) < 1e-6 for r in recalls)
        assert list((tmp_path / out).glob("events.out.tfevents.*"))
    # 4 classes of 6 gallery videos: a random ranking gets R@1 near 1/4; the trained features near 1
    assert trained["recall@1"] >= 0.75, (trained, random)
    assert trained["recall@1"] >= random["recall@1"] + 0.25, (trained, random)


def test_retrieval_refuses_finetune(motion_set, tmp_path):
    from fastcvrl.eval.evaluate import EvalError, main

    train_m, test_m = motion_set
    with pytest.raises(EvalError, match="--retrieval .* --finetune"):
        main(
            [
                "--random-init",
                "--retrieval",
                "--finetune",
                "--train-manifest",
                train_m,
                "--test-manifest",
                test_m,
            ]
        )
    assert not (tmp_path / "runs").exists()
