"""Everything that defines a clip: CVRL's temporal and spatial draws, packet trimming, the host sources and
the DALI graphs (the only package importing ``nvidia.dali`` besides ``dali_pipelines.loaders``).

- ``temporal``: where the two clips of a video start (CVRL's gap rule), NumPy.
- ``spatial``: per-clip augmentation parameters (crop box, flip, colour, blur, solarize), NumPy.
- ``packets``: the packet index of a file and the trimmed stream a clip needs (PyAV demux, no decoding).
- ``host``: the host sources handed to ``fn.external_source``: epoch order, shards, clip plans, named columns.
- ``pipelines``: the DALI graphs (pretraining, linear-evaluation training, test views), CPU or GPU.
- ``torch_augment``: the torch twin of the augmentation, used on the CPU.
- ``codecs``: which codecs and sizes each decoder accepts, checked from the manifest before any work.

All but ``pipelines`` import without DALI.
"""
