"""``predict`` on a video file: every frame through the model, an annotated video out.

``python -m ttfnet_lightning.predict ckpt=... input=clip.mp4 output=DIR`` writes ``DIR/clip.mp4``
(the frames with their boxes above ``draw_threshold``, at the input's frame rate, H.264 when this
FFmpeg build has it, else MPEG-4 Part 2), ``DIR/detections.json`` (COCO results, ``image_id`` = frame
index from 0) and ``DIR/video.json`` (frames, frame rate, size, codec, the categories). Frames are
decoded and encoded with PyAV (FFmpeg's libraries in the wheel: the ``video`` extra,
``pip install 'ttfnet-lightning[video]'``); torchvision 0.29 has no video reader any more and
torchcodec needs a system FFmpeg. Nothing is accumulated: frames stream through in batches of
``batch_size``. The output video is written to a temporary name and renamed when complete, so an
interrupted run leaves no half video (and never touches the input).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ttfnet_lightning.core.decode import coco_results
from ttfnet_lightning.core.drawing import draw_detections
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.deploy.onnx_runtime import OnnxDetector
from ttfnet_lightning.deploy.output_files import publish, temporary_path, write_text_atomic
from ttfnet_lightning.deploy.predict_files import check_output_folder, draw_threshold
from ttfnet_lightning.training.checkpoints import load_model, pick_device

log = logging.getLogger(__name__)

__all__ = ["VIDEO_SUFFIXES", "VIDEO_EXTRA_HINT", "is_video", "import_av", "annotate_video", "predict_video"]

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"}
VIDEO_EXTRA_HINT = "pip install 'ttfnet-lightning[video]' (or: pip install av)"
CODECS = ("libx264", "h264", "mpeg4")  # the first this FFmpeg build can encode

# images (B, 3, h, w) uint8 at the model's input size, original sizes -> detections per image
Detector = Callable[[Tensor, list[tuple[int, int]]], list[dict[str, Tensor]]]


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"predict on a video needs PyAV, which is not installed: {VIDEO_EXTRA_HINT}") from exc
    return av


def _frames(container: Any, stream: Any, batch_size: int) -> Iterator[list[Tensor]]:
    """Batches of decoded frames, each (3, H, W) uint8 RGB."""
    batch: list[Tensor] = []
    for frame in container.decode(stream):
        batch.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoder(av: Any, container: Any, *, rate: Fraction, width: int, height: int) -> Any:
    """An output video stream with the first codec of :data:`CODECS` this FFmpeg build encodes."""
    for name in CODECS:
        if name in av.codecs_available:
            try:
                stream = container.add_stream(name, rate=rate)
            except (ValueError, av.FFmpegError):
                continue
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            return stream
    raise RuntimeError(f"this FFmpeg build can encode none of {CODECS}")


def _even(n: int) -> int:
    return n - n % 2  # yuv420p needs even sides: the last row/column of an odd frame is dropped


def _resized(batch: list[Tensor], input_size: tuple[int, int]) -> Tensor:
    return torch.stack([TF.resize(f, list(input_size), antialias=True) for f in batch])


def _encode(av: Any, sink: Any, out: Any, batch: list[Tensor], dets: list[dict[str, Tensor]], draw: dict) -> None:
    """Each frame with its detections drawn, encoded into ``out``."""
    for img, det in zip(batch, dets):
        drawn = draw_detections(img, det["boxes"].cpu(), det["labels"].cpu(), det["scores"].cpu(), **draw)
        rgb = drawn[:, : out.height, : out.width].permute(1, 2, 0).contiguous().numpy()
        sink.mux(out.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))


def annotate_video(
    path: Path,
    output: Path,
    detector: Detector,
    *,
    input_size: tuple[int, int],
    class_names: list[str],
    cat_ids: list[int],
    draw_threshold: float,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Detect on every frame of ``path`` and write ``output/<stem>.mp4`` (annotated), ``detections.json``
    and ``video.json``; returns the summary (frames, detections, output files).

    Raises:
        DataError: ``path`` cannot be opened as a video or holds no video stream or no frame.
    """
    av = import_av()
    try:
        source = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise DataError(f"cannot read video {path}: {type(exc).__name__}: {exc}") from exc
    with source:
        if not source.streams.video:
            raise DataError(f"{path} holds no video stream")
        stream = source.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        target = output / f"{path.stem}.mp4"
        draw = {"class_names": class_names, "score_threshold": float(draw_threshold)}
        frames, results, codec = 0, [], ""
        with temporary_path(target) as tmp:
            with av.open(str(tmp), mode="w", format="mp4") as sink:
                out = None
                for batch in _frames(source, stream, int(batch_size)):
                    if out is None:
                        out = _encoder(
                            av, sink, rate=rate, width=_even(batch[0].shape[2]), height=_even(batch[0].shape[1])
                        )
                        codec = out.codec_context.name
                    dets = detector(_resized(batch, input_size), [tuple(f.shape[-2:]) for f in batch])
                    results += coco_results(dets, list(range(frames, frames + len(batch))), cat_ids)
                    _encode(av, sink, out, batch, dets, draw)
                    frames += len(batch)
                if out is not None:
                    sink.mux(out.encode())  # flush the encoder
            if frames == 0:
                raise DataError(f"{path}: no frame could be decoded")
            publish(tmp, target)
    write_text_atomic(output / "detections.json", json.dumps(results))
    info = {
        "source": str(path),
        "output": target.name,
        "frames": frames,
        "fps": float(rate),
        "codec": codec,
        "categories": [{"id": int(cat_ids[i]), "name": n} for i, n in enumerate(class_names)],
    }
    write_text_atomic(output / "video.json", json.dumps(info, indent=1))
    print(f"{frames} frames of {path} -> {target} ({len(results)} detections in detections.json)")
    return {"num_images": frames, "num_detections": len(results), "output": str(output), "video": str(target)}


def _module_detector(model: Any, device: torch.device) -> Detector:
    """A trained module (``load_model``) as a :data:`Detector`: normalisation, network, decoder."""
    model = model.to(device).eval()

    @torch.inference_mode()
    def detect(images: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        hm, wh = model(model.normalize(images.to(device)))
        return model.decode(hm, wh, [{"orig_size": s} for s in sizes], tuple(images.shape[-2:]))

    return detect


def predict_video(cfg: Any) -> dict[str, Any]:
    """``predict`` for ``cfg.input`` = a video file (:data:`VIDEO_SUFFIXES`), with a checkpoint or an
    exported ``.onnx`` model (``cfg.ckpt``); the same keys as image prediction
    (``output``, ``draw_threshold``, ``batch_size``, ``device``, ``inference``).

    Raises:
        FileNotFoundError: ``cfg.input`` is not a file.
        OutputPathError: the output video would overwrite the input.
        DataError: the file is not a readable video.
    """
    path = Path(cfg.input)
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    import_av()  # before the model is loaded
    out = check_output_folder(cfg.output, path, [path], [f"{path.stem}.mp4", "video.json"])
    if str(cfg.ckpt).lower().endswith(".onnx"):
        onnx = OnnxDetector(cfg.ckpt, device=str(cfg.get("device", "cpu")))
        names, ids, size = onnx.class_names, onnx.label_to_cat_id, onnx.input_size
        detector: Detector = lambda images, sizes: onnx.detect(images, orig_sizes=sizes)  # noqa: E731
    else:
        model = load_model(cfg.ckpt)
        inf = cfg.get("inference") or {}
        if inf.get("optimize", True):
            model.optimize_for_inference(precision=str(inf.get("precision", "fp32")), compile=bool(inf.get("compile")))
        names, ids, size = model.class_names, model.label_to_cat_id, tuple(model.input_size)
        detector = _module_detector(model, pick_device(str(cfg.get("device", "auto"))))
    return annotate_video(
        path,
        out,
        detector,
        input_size=size,
        class_names=list(names),
        cat_ids=list(ids or range(len(names))),
        draw_threshold=draw_threshold(cfg),
        batch_size=int(cfg.batch_size),
    )
