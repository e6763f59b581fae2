"""Peers beside our CPU loader (``loader_bench.py --peers decord``): the same work, per loader and codec.

    python benchmarks/loader_bench.py --device cpu --peers decord --videos DIR --json peers.json --plot s.svg

Work, the same for every candidate: the videos of ``--videos DIR`` (else small synthetic ones), transcoded by
``prepare``'s transcoder to each codec at short side 256 with a keyframe every 16 frames and listed
``--copies`` times; the project's CVRL draws (``host.PretrainSource``'s random stream: two 16 x 2 clips per
video, random resized crop and flip) and epoch order (``host.shard_order``); each clip cropped and resized
to 112 x 112 by ``torch_augment.crop_resize``; uint8 batches ``(B, 3, T, S, S)`` channels_last_3d of 32
videos. No colour jitter: it is the same torch code for every candidate.

Candidates (``<loader>/<codec>``):

- ``fastcvrl/vp9``, ``fastcvrl/mjpeg``: our CPU loader (``DaliLoader`` with the trainer's source and
  pipeline: trimmed packets, DALI decoding with one thread per core; MJPEG as JPEG images,
  ``jpeg_frames``) handing over uint8 crops instead of normalised views;
- ``decord/h264``, ``decord/vp9``: decord2 (``pip install -e '.[bench]'``): a ``VideoReader`` per video
  (one decoder thread), ``get_batch`` of both clips' frames, in a ``DataLoader`` with one worker per core;
- ``baseline/h264``: PyAV seeking to the keyframe before each clip (``baseline_loader.decode_frames``), in
  the same ``DataLoader``.

Equal work is checked, not assumed: every candidate's plan comes from ``clip_plan`` (tested equal to
``PretrainSource``'s draws), the DALI loader's delivered starts are compared with it, and the first batch of
each candidate is compared in content with the others decoding the same files (``content_check``: mean and
max uint8 difference). Rounds alternate the candidates' order. CPU ms per clip is the CPU time of the whole
process tree (workers, DALI threads) per clip delivered, the figure to compare on a shared machine.

Per-stage costs (``stages``, fastcvrl only, one thread, CPU ms per clip): the host plan, the packet cut
(locating and reading the payloads), the container write, DALI's decode as the loader runs it (its RGB
conversion inside; MJPEG: each frame's window, ``jpeg_frames.frame_windows``; an estimate of the conversion
from PyAV's converter on the same frames beside it), the crop and resize, the hand-off to torch; for MJPEG
also, as a reference, DALI decoding the same frames whole. The decode, hand-off and crop stages are the
median of three passes after an untimed one. ``decode_share`` is the loader's CPU ms per clip over its decode
stage's, ``decode_share_of_whole_frames`` (MJPEG) over decoding its frames whole.

Each candidate's loader is closed after its round: DALI's threads finishing the batches a pipeline prefetched
would otherwise run, and count, in the next candidate's round (one process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dali_pipelines import recipe, spatial, temporal, torch_augment
from dali_pipelines.host import PretrainSource, shard_order
from dali_pipelines.manifest import VideoEntry
from dali_pipelines.packets import build_index, keep_runs
from fastcvrl.datasets.manifest import write_manifest

CANDIDATES = ("fastcvrl/vp9", "fastcvrl/mjpeg", "decord/h264", "decord/vp9", "baseline/h264")
PEERS = ("decord",)
CACHE = "~/.cache/fastcvrl/peer-bench"


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--peers",
        default="",
        help="comma-separated peers to measure beside our CPU loader (decord); peers.py",
    )
    p.add_argument("--copies", type=int, default=32, help="--peers: times each transcoded file is listed")
    p.add_argument("--short-side", type=int, default=256, help="--peers: transcode to this short side")
    p.add_argument("--plot", default="", help="--peers: write the per-stage costs as an SVG bar chart here")


# ------------------------------------------------------------------------------------------ the work
@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """One video's work: both clips' frames, their sorted union and each view's crop (``crop_roi``)."""

    starts: tuple[int, int]
    union: np.ndarray  # (U,) sorted frame indices
    order: tuple[np.ndarray, np.ndarray]  # (T,) each: the view's frames as positions in ``union``
    roi_start: tuple[np.ndarray, np.ndarray]  # (2,) float32 each, (y, x); x bounds swapped = flipped
    roi_end: tuple[np.ndarray, np.ndarray]


def clip_plan(
    cfg: Any, seed: int, epoch: int, video: int, num_frames: int, height: int, width: int
) -> ClipPlan:
    """The draws ``PretrainSource.sample`` makes for ``video`` in ``epoch``, in its order, without cutting
    packets: the clip starts, then per view the crop, the flip and the colour (drawn to keep the stream in
    step, unused here), blur and solarize."""
    rng = np.random.default_rng([seed, epoch, video, PretrainSource.purpose])
    n, t, s = num_frames, cfg.num_frames, cfg.stride
    s1, s2 = temporal.sample_starts(rng, n, t, s, cfg.gap_distribution, cfg.gap_power)[0].tolist()
    frames = [(a + s * k) % n for a in (s1, s2) for k in range(t)]
    union = np.array(sorted(set(frames)), np.int64)
    inverse = np.searchsorted(union, frames).astype(np.int32)
    starts, ends = [], []
    for view in range(2):
        box = spatial.random_resized_crop(
            rng, height, width, (cfg.min_area, cfg.max_area), (cfg.min_aspect, cfg.max_aspect)
        )
        a, b = spatial.crop_roi(box, rng.random() < cfg.flip_prob)
        starts.append(a)
        ends.append(b)
        recipe.color_params(
            rng,
            cfg.color_jitter_prob,
            (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
            cfg.grayscale_prob,
        )
        if cfg.blur:
            recipe.blur_sigma(rng, cfg.blur_prob[view])
        if cfg.solarize:
            rng.random()
    return ClipPlan((s1, s2), union, (inverse[:t], inverse[t:]), tuple(starts), tuple(ends))


def crop_views(video: torch.Tensor, plan: ClipPlan, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views of a video from its decoded ``union`` frames ``(U, H, W, 3)`` uint8: ``(T, 3, S, S)``."""
    return tuple(
        torch_augment.crop_resize(video, plan.order[v], plan.roi_start[v], plan.roi_end[v], size)
        for v in (0, 1)
    )


def decord_frames(path: str, frames: np.ndarray) -> np.ndarray:
    """``(len(frames), H, W, 3)`` uint8 RGB from decord2: a ``VideoReader`` (one thread) and ``get_batch``,
    as peer codebases load a clip."""
    import decord

    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    return reader.get_batch(np.asarray(frames).tolist()).asnumpy()


def pyav_frames(path: str, plan: ClipPlan, entry: VideoEntry, cfg: Any) -> tuple[np.ndarray, int]:
    """The union frames decoded by the baseline's PyAV path (one seek per clip); frames decoded."""
    from baseline_loader import decode_frames

    got: dict[int, np.ndarray] = {}
    decoded = 0
    for s in plan.starts:
        idx = temporal.clip_indices(s, entry.num_frames, cfg.num_frames, cfg.stride)
        frames, n = decode_frames(path, idx, entry.fps)
        decoded += n
        got.update(zip(idx.tolist(), frames))
    return np.stack([got[int(f)] for f in plan.union]), decoded


def keyframe_model_frames(path: str, union: np.ndarray) -> int:
    """Frames a decoder that runs forward from the keyframe before each needed stretch decodes (our trimmed
    runs, ``packets.keep_runs``): the estimate reported for decord, which counts nothing itself."""
    return sum(b - a + 1 for a, b in keep_runs(_index(path), union))


_INDICES: dict[str, Any] = {}


def _index(path: str) -> Any:
    if path not in _INDICES:
        _INDICES[path] = build_index(path)
    return _INDICES[path]


class PeerDataset(Dataset):
    """One item per video: both views ``(T, 3, S, S)`` uint8 by ``decoder`` (decord or pyav), the label and
    the frames decoded (decord: ``keyframe_model_frames``)."""

    def __init__(self, entries: list[VideoEntry], cfg: Any, seed: int, decoder: str):
        self.entries, self.cfg, self.seed, self.decoder, self.epoch = entries, cfg, seed, decoder, 0

    def __len__(self) -> int:
        return len(self.entries)

    def plan(self, video: int) -> ClipPlan:
        e = self.entries[video]
        return clip_plan(self.cfg, self.seed, self.epoch, video, e.num_frames, e.height, e.width)

    def __getitem__(self, video: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        e, plan = self.entries[video], self.plan(video)
        if self.decoder == "decord":
            frames, decoded = decord_frames(e.path, plan.union), keyframe_model_frames(e.path, plan.union)
        else:
            frames, decoded = pyav_frames(e.path, plan, e, self.cfg)
        v1, v2 = crop_views(torch.from_numpy(frames), plan, self.cfg.crop_size)
        return v1, v2, e.label, decoded


def collate_uint8(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, 3, T, S, S)`` uint8 channels_last_3d views, labels, frames decoded."""
    views = []
    for k in (0, 1):
        t, c, s, _ = items[0][k].shape
        out = torch.empty((len(items), c, t, s, s), dtype=torch.uint8, memory_format=torch.channels_last_3d)
        for i, it in enumerate(items):
            out[i].copy_(it[k].permute(1, 0, 2, 3))
        views.append(out)
    label = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return views[0], views[1], label, torch.tensor([it[3] for it in items], dtype=torch.int64)


class PeerLoader:
    """``(view1, view2, label)`` uint8 batches of ``PeerDataset`` in the DALI loader's epoch order, one
    ``DataLoader`` worker process per ``workers``; ``frames_decoded`` / ``videos`` since creation."""

    def __init__(
        self, entries: list[VideoEntry], cfg: Any, batch: int, seed: int, decoder: str, workers: int
    ):
        self.dataset = PeerDataset(entries, cfg, seed, decoder)
        self.batch, self.seed, self.workers, self.epoch = batch, seed, workers, 0
        self.frames_decoded = self.videos = 0

    def __len__(self) -> int:
        return len(self.dataset) // self.batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.dataset.epoch = self.epoch
        order = shard_order(len(self.dataset), 0, 1, self.epoch, self.seed, True)[: len(self) * self.batch]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch,
            sampler=order.tolist(),
            num_workers=self.workers,
            collate_fn=collate_uint8,
        )
        for v1, v2, label, decoded in loader:
            self.frames_decoded += int(decoded.sum())
            self.videos += len(label)
            yield v1, v2, label


def _cpu_settings(cfg: Any) -> Any:
    """The trainer's pretraining settings for ``cfg``, decoded on the CPU and augmented by torch."""
    from fastcvrl.data import pretrain_settings

    settings = pretrain_settings(cfg)
    runtime = dataclasses.replace(settings.runtime, device="cpu", augment="torch")
    return dataclasses.replace(settings, runtime=runtime)


def fastcvrl_loader(cfg: Any, manifest: str, seed: int) -> Any:
    """Our CPU loader with the trainer's source, pipeline and hand-off (``build_pretrain_loader``'s pieces),
    delivering the crops as uint8 ``(B, 3, T, S, S)`` channels_last_3d instead of normalised views."""
    from dali_pipelines import jpeg_frames, loaders
    from dali_pipelines.manifest import read_manifest
    from dali_pipelines.pipelines import pretrain_outputs, pretrain_pipeline

    d, batch = cfg.data, cfg.train.batch_size
    entries = read_manifest(manifest)
    jpeg = jpeg_frames.all_mjpeg(entries)
    kind = jpeg_frames.JpegPretrainSource if jpeg else PretrainSource
    settings = _cpu_settings(cfg)
    source = kind(entries, batch, settings, seed=seed)
    kw = loaders._pipeline_kw(settings.runtime, torch.device("cpu"), seed)
    at = {name: i for i, name in enumerate(pretrain_outputs(source, "torch"))}

    def make(src: Any) -> Any:
        if jpeg:
            frames = jpeg_frames.FrameSource(src)
            pipe = jpeg_frames.frames_pipeline(frames, max_frames=batch * 2 * d.num_frames, **kw)
            return jpeg_frames.VideoBatches(pipe, frames)
        return pretrain_pipeline(src, batch_size=batch, augment="torch", **kw)

    def convert(outs: tuple, meta: np.ndarray) -> tuple:
        with loaders._one_torch_thread(torch.device("cpu")):  # as the loader's own torch path
            return _convert(outs, meta)

    def _convert(outs: tuple, meta: np.ndarray) -> tuple:
        crop = jpeg_frames.crop_resize_frames if jpeg else torch_augment.crop_resize
        n = len(meta)
        videos = outs[0] if jpeg else [loaders.to_torch(outs[0], torch.device("cpu"), i) for i in range(n)]
        views = []
        for v in (1, 2):
            order = loaders._host(outs[at[f"order{v}"]])
            a, b = loaders._host(outs[at[f"roi_start{v}"]]), loaders._host(outs[at[f"roi_end{v}"]])
            out = torch.empty(
                (n, 3, d.num_frames, d.crop_size, d.crop_size),
                dtype=torch.uint8,
                memory_format=torch.channels_last_3d,
            )
            for i in range(n):
                out[i].copy_(crop(videos[i], order[i], a[i], b[i], d.crop_size).permute(1, 0, 2, 3))
            views.append(out)
        return views[0], views[1], torch.from_numpy(loaders._host(outs[-1]).astype(np.int64))

    return loaders.DaliLoader(source, make, convert, torch.device("cpu"), True, 2, kw["host_workers"])


# ------------------------------------------------------------------------------------------ data
def _synthetic_sources(folder: Path) -> list[str]:
    """A few textured moving-shape videos (the synthetic ``objects`` scene) where no ``--videos`` is given."""
    from fastcvrl.datasets.synthetic import ensure_synthetic

    train, _ = ensure_synthetic(
        folder,
        num_classes=2,
        videos_per_class=2,
        size=128,
        num_frames=96,
        test_videos_per_class=0,
        scene="objects",
    )
    from dali_pipelines.manifest import read_manifest

    return [e.path for e in read_manifest(train)]


def datasets(args: Any, codecs: set[str]) -> dict[str, str]:
    """codec -> manifest of the transcoded videos, each listed ``--copies`` times under its own name."""
    from host_feed import _transcoded

    cache = Path(os.path.expanduser(CACHE))
    if args.videos:
        exts = (".mp4", ".avi", ".mkv", ".webm", ".mov")
        sources = sorted(str(p) for p in Path(args.videos).glob("*") if p.suffix.lower() in exts)
        if not sources:
            raise SystemExit(f"--videos {args.videos}: no videos there")
    else:
        print("--peers: no --videos given; measuring on small synthetic videos", flush=True)
        sources = _synthetic_sources(cache / "synthetic")
    tag = hashlib.sha1("\n".join(sources).encode()).hexdigest()[:12]  # a cache folder per set of sources
    out = {}
    for codec in sorted(codecs):
        # one file per transcode (sources with the same name in different folders share one)
        files = list(dict(_transcoded(codec, sources, cache / tag, args.short_side, 16)).items())
        folder = cache / tag / f"list-{codec}-s{args.short_side}-x{args.copies}"
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for path, frames in files:
            idx = _index(path)
            for k in range(args.copies):
                link = folder / f"c{k}_{Path(path).name}"
                if not link.exists():
                    os.symlink(path, link)
                entries.append(VideoEntry(str(link), k % 2, frames, 25.0, idx.width, idx.height, codec))
        manifest = folder / "manifest.csv"
        write_manifest(manifest, entries, relative=False)
        out[codec] = str(manifest)
    return out


# ------------------------------------------------------------------------------------------ stages
# the stage pipelines run one iteration per run(), none ahead (else the next decode lands in the next stage)
_SYNC = dict(prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)


def _cpu() -> float:
    return time.process_time()  # this process, all threads (DALI's included)


def _own() -> float:
    return time.thread_time()  # this thread only: the host and torch stages (DALI's idle threads apart)


def stages(
    cfg: Any, manifest: str, seed: int, max_videos: int, chunk: int, passes: int = 3
) -> dict[str, float]:
    """CPU ms per clip of each stage of our loader for one codec, one thread, stage by stage, over
    ``max_videos`` videos in batches of ``chunk``; the decode, hand-off and crop stages: the median of
    ``passes`` passes after an untimed one (torch's thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    try:
        return _stages(cfg, manifest, seed, max_videos, chunk, passes)
    finally:
        torch.set_num_threads(threads)


def _stages(cfg: Any, manifest: str, seed: int, max_videos: int, chunk: int, passes: int) -> dict[str, float]:
    import av
    from av.video.reformatter import VideoReformatter
    from nvidia.dali import fn, pipeline_def, types

    from dali_pipelines import jpeg_frames, loaders
    from dali_pipelines.manifest import read_manifest
    from dali_pipelines.packets import _read_payloads, _runs

    torch.set_num_threads(1)  # before any torch op: idle pool threads spinning would count as work here
    d = cfg.data
    entries = read_manifest(manifest)
    jpeg = jpeg_frames.all_mjpeg(entries)
    source = (jpeg_frames.JpegPretrainSource if jpeg else PretrainSource)(
        entries, 8, _cpu_settings(cfg), seed=seed
    )
    videos = list(range(min(max_videos, len(entries))))
    for v in videos:
        source.sample(v)  # untimed: index every file (the steady state of training)
    source.set_epoch(1)
    ms: dict[str, float] = dict.fromkeys(("host plan", "packet cut", "container write"), 0.0)
    samples = []
    for v in videos:
        e, idx = entries[v], source.index(v)
        c0 = _own()
        plan = clip_plan(d, seed, 1, v, source.length(v, idx), idx.height, idx.width)
        c1 = _own()
        first, last = _runs(idx, plan.union)
        packets = np.array([p for a, b in zip(first, last) for p in range(a, b + 1)], np.int64)
        _read_payloads(idx, packets, None)
        c2 = _own()
        cut = source.cut(idx, plan.union, None)
        c3 = _own()
        ms["host plan"] += c1 - c0
        ms["packet cut"] += c2 - c1
        ms["container write"] += max(0.0, (c3 - c2) - (c2 - c1))
        samples.append((cut, plan, getattr(source, "_ends", None), e))
    # decode alone (the prepared inputs through the decoder, one thread), the hand-off and the crops, in
    # batches of ``chunk`` videos as the loader runs them (one batch of every video: outputs of a few 100 MB);
    # MJPEG: each frame's window as the loader decodes it, and (a reference beside it) whole frames
    chunks = [samples[k : k + chunk] for k in range(0, len(samples), chunk)]
    current: list = []
    windows = {}
    if jpeg:
        for cut, plan, _, _ in samples:
            views = [(plan.order[v], plan.roi_start[v], plan.roi_end[v]) for v in (0, 1)]
            windows[id(cut)] = jpeg_frames.frame_windows(len(plan.union), views)

        def jpegs() -> list:
            out = []
            for cut, _, ends, _ in current:
                starts = np.concatenate([[0], ends[:-1]])
                out += [cut.encoded[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
            return out

        def feed() -> tuple:
            w = np.concatenate([windows[id(c)] for c, *_ in current])
            return jpegs(), np.ascontiguousarray(w[:, :2]), np.ascontiguousarray(w[:, 2:])

        most = max(sum(len(p.union) for _, p, _, _ in c) for c in chunks)

        @pipeline_def(batch_size=most, num_threads=1, device_id=None, **_SYNC)
        def dec():
            e, anchor, shape = fn.external_source(source=feed, num_outputs=3, batch=True)
            return fn.decoders.image_slice(
                e,
                anchor,
                shape,
                output_type=types.RGB,
                axis_names="HW",
                normalized_anchor=False,
                normalized_shape=False,
            )

        @pipeline_def(batch_size=most, num_threads=1, device_id=None, **_SYNC)
        def dec_whole():
            return fn.decoders.image(fn.external_source(source=jpegs, batch=True), output_type=types.RGB)
    else:

        def feed2() -> tuple:
            return [c.encoded for c, *_ in current], [c.positions for c, *_ in current]

        @pipeline_def(batch_size=chunk, num_threads=1, device_id=None, **_SYNC)
        def dec():
            e, f = fn.external_source(source=feed2, num_outputs=2, batch=True)
            return fn.decoders.video(e, device="cpu", frames=f, build_index=False)

    pipe = dec()
    whole_pipe = dec_whole() if jpeg else None
    decode_key = "DALI decode (with RGB)"
    keys = (decode_key, "hand-off to torch", "crop and resize")
    if jpeg:
        keys = (*keys, "reference: DALI decode of whole frames (with RGB)")
    crop = jpeg_frames.crop_resize_frames if jpeg else torch_augment.crop_resize
    per_pass: list[dict[str, float]] = []
    for rep in range(passes + 1):  # the first pass untimed: first runs, first touches of the memory
        timed = dict.fromkeys(keys, 0.0)
        for part in chunks:
            current[:] = part
            if whole_pipe is not None:
                c0 = _cpu()
                whole_pipe.run()
                timed[keys[-1]] += _cpu() - c0
            c0 = _cpu()
            (out,) = pipe.run()
            c1 = _cpu()
            o1 = _own()
            if jpeg:
                frames = [torch.from_numpy(np.asarray(out[i])) for i in range(len(out))]
                vids, k = [], 0
                for cut, plan, _, _ in part:
                    n = len(plan.union)
                    origins = windows[id(cut)][:, :2].tolist()
                    vids.append(jpeg_frames.Windows(frames[k : k + n], origins))
                    k += n
            else:
                vids = [loaders.to_torch(out, torch.device("cpu"), i) for i in range(len(part))]
            c2 = _own()
            clips = [
                crop(vid, plan.order[v], plan.roi_start[v], plan.roi_end[v], d.crop_size)
                for vid, (_, plan, _, _) in zip(vids, part)
                for v in (0, 1)
            ]
            c3 = _own()
            for v in (0, 1):  # writing the clips into the two views' batches: part of the hand-off
                batch = torch.empty(
                    (len(part), 3, d.num_frames, d.crop_size, d.crop_size),
                    dtype=torch.uint8,
                    memory_format=torch.channels_last_3d,
                )
                for i in range(len(part)):
                    batch[i].copy_(clips[2 * i + v].permute(1, 0, 2, 3))
            c4 = _own()
            timed[decode_key] += c1 - c0
            timed["hand-off to torch"] += (c2 - o1) + (c4 - c3)
            timed["crop and resize"] += c3 - c2
            del out, vids
        if rep:
            per_pass.append(timed)
    for k in keys:  # the median pass, stage by stage
        ms[k] = float(np.median([p[k] for p in per_pass]))
    # what RGB conversion of the same frames costs with PyAV's converter (an estimate: DALI's is inside)
    rgb = VideoReformatter()
    conv = 0.0
    for cut, plan, ends, _ in samples:
        data = cut.encoded.tobytes() if not jpeg else cut.encoded[: ends[0]].tobytes()
        with av.open(io.BytesIO(data), format="mjpeg" if jpeg else None) as c:
            frame = next(c.decode(video=0))
        c0 = _cpu()
        for _ in range(len(plan.union)):
            rgb.reformat(frame, format="rgb24").to_ndarray()
        conv += _cpu() - c0
    ms["of the decode: RGB conversion (PyAV estimate)"] = conv
    n_clips = 2 * len(samples)
    return {k: 1000.0 * v / n_clips for k, v in ms.items()}


# ------------------------------------------------------------------------------------------ the run
def decord_version() -> str | None:
    """decord2's version, or None where it is not installed."""
    if importlib.util.find_spec("decord") is None:
        return None
    try:
        import decord
    except ImportError:  # installed but unusable here (e.g. a missing shared library)
        return None
    return str(getattr(decord, "__version__", "?"))


def candidates(peers: list[str]) -> list[str]:
    """The candidates to run: ours and the baseline always, each peer where it is installed."""
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; choose from {list(PEERS)}")
    names = [c for c in CANDIDATES if c.split("/")[0] in ("fastcvrl", "baseline")]
    if "decord" in peers:
        if decord_version() is None:
            print("--peers decord: decord2 is not installed (pip install -e '.[bench]'); running the rest")
        else:
            names += [c for c in CANDIDATES if c.startswith("decord/")]
    return [c for c in CANDIDATES if c in names]


def build(name: str, cfg: Any, manifest: str, seed: int, workers: int) -> Any:
    from dali_pipelines.manifest import read_manifest

    loader, _ = name.split("/")
    if loader == "fastcvrl":
        return fastcvrl_loader(cfg, manifest, seed)
    return PeerLoader(
        read_manifest(manifest),
        cfg.data,
        cfg.train.batch_size,
        seed,
        loader.replace("baseline", "pyav"),
        workers,
    )


def first_batch(loader: Any, epoch: int) -> tuple:
    loader.set_epoch(epoch)
    it = iter(loader)
    batch = next(it)
    if hasattr(it, "close"):
        it.close()
    return batch


def plans_agree(loader: Any, cfg: Any, seed: int, epoch: int) -> bool:
    """Whether the DALI loader's last batch started its clips where ``clip_plan`` says (equal work)."""
    from dali_pipelines.host import meta_field

    meta = loader.last_meta
    for video, s1, s2 in zip(*(meta_field(meta, f).tolist() for f in ("video", "start1", "start2"))):
        e = loader.source.entries[video]
        idx = loader.source.index(video)
        plan = clip_plan(cfg.data, seed, epoch, video, loader.source.length(video, idx), e.height, e.width)
        if plan.starts != (s1, s2):
            return False
    return True


def content_check(batches: dict[str, tuple]) -> dict[str, dict[str, float]]:
    """Mean and max uint8 difference between the first batches of candidates decoding the same files."""
    out = {}
    names = list(batches)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a.split("/")[1] != b.split("/")[1]:
                continue
            d = [(x.int() - y.int()).abs().float() for x, y in zip(batches[a][:2], batches[b][:2])]
            out[f"{a} vs {b}"] = {
                "mean": float(sum(t.mean() for t in d) / 2),
                "max": float(max(t.max() for t in d)),
            }
    return out


def run(args: Any) -> dict[str, Any]:
    """Every candidate over interleaved rounds, then the per-stage costs of ours; the result dict."""
    from common import environment, summarize
    from loader_bench import time_loader  # noqa: PLC0415

    from fastcvrl.config import Config

    names = candidates([p.strip() for p in args.peers.split(",") if p.strip()])
    manifests = datasets(args, {n.split("/")[1] for n in names})
    cfg = Config()
    d = cfg.data
    d.device, d.num_threads, d.host_workers = "cpu", args.workers, args.host_workers
    d.num_frames, d.stride, d.crop_size = args.frames, args.stride, args.crop
    d.color_jitter_prob = d.grayscale_prob = 0.0
    cfg.train.batch_size = args.batch_size
    loaders = {n: build(n, cfg, manifests[n.split("/")[1]], args.seed, args.workers) for n in names}
    for loader in loaders.values():  # untimed: one epoch each (file indices, worker start, page cache)
        loader.set_epoch(0)
        for _ in loader:
            pass
    batches = {n: first_batch(loader, 1) for n, loader in loaders.items()}
    agree = {n: plans_agree(loaders[n], cfg, args.seed, 1) for n in names if n.startswith("fastcvrl/")}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in names if rep % 2 == 0 else names[::-1]:
            r = time_loader(loaders[n], args.warmup, args.iters, 2 + 1000 * rep, lambda: None, memory=False)
            runs[n].append(r)
            if hasattr(loaders[n], "close"):
                # stop its pipeline now: DALI's threads finishing the batches it prefetched would count
                # as the next candidate's CPU time (one process); the next round builds a new one anyway
                loaders[n].close()
    for loader in loaders.values():
        if hasattr(loader, "close"):
            loader.close()
    st = {
        n: stages(cfg, manifests[n.split("/")[1]], args.seed, 64, args.batch_size)
        for n in names
        if n.startswith("fastcvrl/")
    }
    result: dict[str, Any] = {
        "benchmark": "loader-peers",
        "device": "cpu",
        "candidates": names,
        "decord": decord_version(),
        "settings": {
            "frames": args.frames,
            "stride": args.stride,
            "crop": args.crop,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "copies": args.copies,
            "warmup": args.warmup,
            "iters": args.iters,
            "repeats": args.repeats,
            "videos": args.videos or "synthetic",
            "short_side": args.short_side,
            "gop": 16,
        },
        "clips_per_s": {},
        "clips_per_s_range": {},
        "cpu_ms_per_clip": {},
        "frames_per_clip_pair": {},
        "plans_agree": agree,
        "content_check": content_check(batches),
        "stages_ms_per_clip": st,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "env": environment(),
    }
    for n in names:
        cps = summarize([r["clips_per_s"] for r in runs[n]])
        fpc = [r["frames_per_clip"] for r in runs[n] if r["frames_per_clip"] is not None]
        result["clips_per_s"][n] = cps["median"]
        result["clips_per_s_range"][n] = [cps["min"], cps["max"]]
        result["cpu_ms_per_clip"][n] = summarize([r["cpu_ms_per_clip"] for r in runs[n]])["median"]
        result["frames_per_clip_pair"][n] = 2 * sum(fpc) / len(fpc) if fpc else None
    cpu = result["cpu_ms_per_clip"]
    result["decode_share"] = {
        n: cpu[n] / s["DALI decode (with RGB)"] for n, s in st.items() if s["DALI decode (with RGB)"] > 0
    }
    whole = "reference: DALI decode of whole frames (with RGB)"
    result["decode_share_of_whole_frames"] = {n: cpu[n] / s[whole] for n, s in st.items() if s.get(whole)}
    ours = [n for n in names if n.startswith("fastcvrl/")]
    best = min(ours, key=cpu.__getitem__)
    result["best_ours"] = best
    if "decord/h264" in cpu:
        result["decord_h264_over_best_ours_cpu"] = cpu["decord/h264"] / cpu[best]
    return result


def print_table(result: dict[str, Any]) -> None:
    from common import format_table

    s, env = result["settings"], result["env"]
    print(
        f"loader peers on the CPU: {s['frames']}x{s['stride']} clips, {s['crop']}x{s['crop']} crops, "
        f"uint8 batches of {s['batch_size']} videos, {s['workers']} workers/threads; videos: {s['videos']} "
        f"(short side {s['short_side']}, GOP 16, x{s['copies']}); {s['repeats']} interleaved rounds of "
        f"{s['iters']} batches"
    )
    print(
        f"  {env['cpu']} ({env['cores']} usable cores); load average "
        f"{' '.join(map(str, result['loadavg']))} at the end"
    )
    rows = []
    for n in result["candidates"]:
        lo, hi = result["clips_per_s_range"][n]
        fp = result["frames_per_clip_pair"][n]
        rows.append(
            [
                n,
                result["clips_per_s"][n],
                f"{lo:.1f}-{hi:.1f}",
                result["cpu_ms_per_clip"][n],
                None if fp is None else (f"~{fp:.1f}" if n.startswith("decord") else fp),
            ]
        )
    print(format_table(["loader/codec", "clips/s", "range", "CPU ms/clip", "frames decoded/pair"], rows))
    print(
        "  decord's frames: estimated (forward from the keyframe before each stretch); it counts none itself"
    )
    for n, st in result["stages_ms_per_clip"].items():
        print(
            f"  stages of {n} (CPU ms per clip, one thread): "
            + ", ".join(f"{k} {v:.2f}" for k, v in st.items())
        )
    for n, r in result["decode_share"].items():
        print(f"  {n}: loader CPU ms/clip / decode stage = {r:.2f}")
    for n, r in result.get("decode_share_of_whole_frames", {}).items():
        print(f"  {n}: loader CPU ms/clip / decoding its frames whole = {r:.2f}")
    print(
        "  content check (uint8 levels, first batch): "
        + "; ".join(
            f"{k}: mean {v['mean']:.2f} max {v['max']:.0f}" for k, v in result["content_check"].items()
        )
    )
    print(f"  plans agree with clip_plan: {result['plans_agree']}")
    if "decord_h264_over_best_ours_cpu" in result:
        print(
            f"  decord/h264 CPU ms/clip over {result['best_ours']}: "
            f"{result['decord_h264_over_best_ours_cpu']:.2f}x"
        )


def write_svg(result: dict[str, Any], path: str) -> None:
    """The per-stage costs as a horizontal stacked bar per codec (SVG, no plotting library)."""
    colours = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948"]
    stages_ = result["stages_ms_per_clip"]
    keys = [k for k in next(iter(stages_.values())) if not k.startswith(("of the decode", "reference:"))]
    total = max(sum(st.get(k, 0.0) for k in keys) for st in stages_.values()) or 1.0
    width, bar, left = 640, 28, 140
    scale = (width - left - 20) / total
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{60 + 40 * len(stages_) + 20 * len(keys)}"'
        ' font-family="sans-serif" font-size="12">',
        '<text x="10" y="20">CPU ms per clip by stage (one thread)</text>',
    ]
    for row, (name, st) in enumerate(stages_.items()):
        y, x = 40 + 40 * row, left
        parts.append(f'<text x="10" y="{y + 18}">{name}</text>')
        for k, c in zip(keys, colours):
            w = st[k] * scale
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{c}"/>')
            x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 18}">{sum(st[k] for k in keys):.1f} ms</text>')
    y0 = 50 + 40 * len(stages_)
    for i, (k, c) in enumerate(zip(keys, colours)):
        parts.append(f'<rect x="10" y="{y0 + 20 * i}" width="12" height="12" fill="{c}"/>')
        parts.append(f'<text x="28" y="{y0 + 20 * i + 11}">{k}</text>')
    parts.append("</svg>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts) + "\n")
