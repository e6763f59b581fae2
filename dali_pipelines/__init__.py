"""The data path, from manifest rows to device tensors (the only package importing ``nvidia.dali``).

It takes its own typed settings and imports nothing from ``fastcvrl``; ``fastcvrl.data`` builds the settings
from the trainer's config. One job per module:

- ``settings``: what the data path takes (clips, gap rule, recipe, runtime), every ``auto`` resolved.
- ``recipe``: the CVRL per-view augmentation draw: what is drawn, in which order, with which probability.
- ``recipe_graph``: the recipe's colour, blur and solarize as DALI operations; ``torch_augment``: their torch
  twin, the CPU fast path; ``spatial``: crop geometry and the slow NumPy statements both are tested against.
- ``temporal``: where the two clips of a video start (CVRL's gap rule), NumPy.
- ``packets``, ``matroska``: the packet index of a file and the trimmed stream a clip needs (no decoding).
- ``host``: the host sources handed to ``fn.external_source``: epoch order, shards, clip plans, named columns.
- ``pipelines``: the DALI graphs (pretraining, linear-evaluation training, test views), CPU or GPU.
- ``loaders``: the torch-side loaders: hand-off, bad-file recovery (the public surface with ``settings``).
- ``codecs``, ``nvdec``: which codecs and sizes each decoder accepts, and whether NVDEC reuses its decoders.
- ``manifest``: reading the manifest; ``cores``: the cores a rank may use; ``normalize``: uint8 to the
  model's input.

Only ``pipelines``, ``recipe_graph`` and what ``loaders`` builds import DALI.
"""
