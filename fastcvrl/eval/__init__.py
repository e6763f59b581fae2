"""Evaluation of a pretrained backbone: ``python -m fastcvrl.eval``.

- ``evaluate``: the command: CVRL's linear protocol (frozen backbone, one linear layer, 10 x 3 test views) or
  fine-tuning, results in ``eval.json``.
- ``probe``: the linear-probe math (training the linear layer, averaging the views of a video, top-k).
- ``knn``: the weighted kNN monitor the trainer runs every ``train.knn_every`` epochs.
"""
