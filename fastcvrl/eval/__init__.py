"""Evaluation of a pretrained backbone: ``python -m fastcvrl.eval``, and the trainer's kNN monitor.

One job per module:

- ``evaluate``: the command (arguments, config, output folder, ``eval.json``) and ``evaluate()``, which runs
  the linear protocol or fine-tuning on two manifests with the DALI loaders.
- ``inputs``: the inputs checked against each other before any model work (eval keys, the two splits'
  classes by name via ``classes.txt``, test labels the training split lacks).
- ``weights``: the backbone a checkpoint file holds (trainer checkpoint, exported ``backbone.pt``, state
  dict).
- ``features``: the one feature-extraction loop (probe, fine-tuning's test, kNN), and its gather over ranks.
- ``linear``: CVRL's linear protocol from loaders (cached feature passes, test views averaged per video).
- ``finetune``: the whole network and a head trained together, then tested on the same views.
- ``probe``: the probe's math, free of data (warm-up + cosine, SGD on features, view averaging).
- ``knn``: the weighted kNN monitor (``train.knn_every``), sharded over ranks, bank and queries capped.
- ``retrieval``: ``--retrieval``, Recall@1/5/10/20 of test videos (queries) among training videos (gallery).

The precision evaluation runs in is ``fastcvrl.precision.eval_precision``.
"""
