"""Dataset tools: everything that turns a video collection into a manifest the trainer can read.

- ``prepare``: ``python -m fastcvrl.prepare SRC --out DIR``: probe every file once, reject the unusable ones
  (``rejected.csv``), optionally transcode to a short keyframe interval, write ``manifest.csv``.
- ``listings``: the collection formats ``prepare`` reads (class folders, Kinetics CSV, UCF-101 / HMDB-51
splits,
  plain ``path label`` lists).
- ``videoprobe``: one file checked with PyAV (decoded frame count, fps, size, codec, or why it is unusable).
- ``video``: small PyAV helpers to encode and decode files.
- ``synthetic``: the built-in synthetic motion dataset (``python -m fastcvrl.synthetic``).

The manifest format itself, the contract between these tools and the loaders, is ``dali_pipelines.manifest``.
"""
