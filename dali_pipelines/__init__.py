"""DALI pipeline definitions for CVRL pretraining and evaluation (the only package importing ``nvidia.dali``
besides ``fastcvrl.data``). ``temporal``, ``spatial``, ``packets`` and ``source`` are plain NumPy/PyAV and can be
imported without DALI; ``pipelines`` holds the DALI graphs."""
