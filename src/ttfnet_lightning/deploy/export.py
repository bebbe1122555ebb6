"""Export a trained TTFNet for deployment: normalisation, network **and decoder** in one graph.

The exported model takes ``images``: (B, 3, H, W) **uint8 RGB** at the export input size (H, W)
(the checkpoint's training size unless ``input_size=[H,W]``; resize the image to it, as
``predict`` does) and returns the decoded detections with a fixed K (``topk``, the checkpoint's
``model.topk`` = 100 by default), sorted by score:

* ``boxes`` (B, K, 4) float32, x1 y1 x2 y2 in input pixels (clamped to the input),
* ``scores`` (B, K) float32 (sigmoid heatmap peaks),
* ``labels`` (B, K) int64 (contiguous class index; ``label_to_cat_id`` in the metadata maps it
  to the data set's category id).

The batch axis is dynamic. The ImageNet mean/std normalisation, the 3x3 max-pool peak keeping and
the top-K are inside the graph; what is left to the consumer is the score threshold (metadata
``score_threshold``, strict ``>``, as ``decode_detections``) and the rescale to the original image
size. The modulated deformable convolutions of the neck are exported through the native
implementation (:mod:`ttfnet_lightning.core.models.deform`: one ``grid_sample`` + one matmul), which maps
to ONNX ``GridSample`` (opset >= 16), so the deformable neck runs in onnxruntime as it is.

A metadata file is written beside the model (``model.onnx`` -> ``model.json``; the same
dictionary is stored in the ONNX file's ``metadata_props`` under ``ttfnet_lightning``): class
names, category ids, input size and layout, mean/std, top-K, score threshold, opset and the
source checkpoint. :mod:`ttfnet_lightning.deploy.onnx_runtime` runs the ONNX model with onnxruntime
(``OnnxDetector``) and backs ``predict ckpt=model.onnx``.

ONNX export needs the ``export`` extra (``pip install 'ttfnet-lightning[export]'``: onnx and
onnxruntime); it uses PyTorch's TorchScript-based exporter (``dynamo=False``), which needs no
further package.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ttfnet_lightning.deploy.graph import DetectionExport, exportable_net, topk_detections
from ttfnet_lightning.deploy.onnx_runtime import check_exported_onnx, metadata_path
from ttfnet_lightning.deploy.output_files import (
    OutputPathError,
    check_output_file,
    file_sha256,
    same_file,
    write_with_sidecar,
)
from ttfnet_lightning.training.checkpoints import load_model
from ttfnet_lightning.training.lit_module import IMAGENET_MEAN, IMAGENET_STD, TTFNetModule

log = logging.getLogger(__name__)

__all__ = [
    "DetectionExport",
    "topk_detections",
    "export_model",
    "export_onnx",
    "export_pt2",
    "export_torchscript",
    "EXPORT_EXTRA_HINT",
    "FORMATS",
    "import_onnx",
    "export",
    "check_export_output",
    "OutputPathError",
]

METADATA_FORMAT = "ttfnet-lightning-export/1"
EXPORT_EXTRA_HINT = "pip install 'ttfnet-lightning[export]' (or: pip install 'onnx>=1.16' 'onnxruntime>=1.18')"
FORMATS = ("onnx", "pt2", "torchscript")
MIN_OPSET = 16  # GridSample (the deformable convs)


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package, which is not installed: {EXPORT_EXTRA_HINT}") from exc
    return onnx


def _metadata(
    model: TTFNetModule, wrapper: DetectionExport, *, fmt: str, source: str | None, opset: int | None
) -> dict[str, Any]:
    net = model.hparams.net
    return {
        "format": METADATA_FORMAT,
        "model_format": fmt,
        "class_names": model.class_names,
        "num_classes": model.num_classes,
        "label_to_cat_id": model.label_to_cat_id,
        "input_size": list(wrapper.input_size),
        "input": {
            "name": "images",
            "shape": ["batch", 3, *wrapper.input_size],
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0, 255],
            "resize": "the whole image to input_size (no letterbox), antialiased",
        },
        "normalization": {
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "scale": 255.0,
            "inside_model": True,
            "formula": "(images - mean * 255) / (std * 255)",
        },
        "outputs": {
            "boxes": {
                "shape": ["batch", wrapper.topk, 4],
                "dtype": "float32",
                "format": "xyxy input pixels",
                # released: x2, y2 are the last pixel + 1 (rescale x2 - 1 and y2 - 1, then add 1: onnx_runtime)
                "box_convention": wrapper.box_convention,
            },
            "scores": {"shape": ["batch", wrapper.topk], "dtype": "float32", "sorted": "descending"},
            "labels": {"shape": ["batch", wrapper.topk], "dtype": "int64"},
        },
        "topk": wrapper.topk,
        "score_threshold": float(model.hparams.decode["score_threshold"]),
        "stride": wrapper.stride,
        "opset": opset,
        "dynamic_batch": True,
        "network": {
            "backbone": net["backbone"],
            "backbone_model": net.get("backbone_model"),
            "deformable": bool(net["deformable"]),
            "class_aware": model.class_aware,
        },
        "source_checkpoint": source,
        "source_sha256": file_sha256(Path(source)) if source and Path(source).is_file() else None,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _load(model: TTFNetModule | str | Path) -> tuple[TTFNetModule, str | None]:
    if isinstance(model, TTFNetModule):
        return model.eval(), None

    return load_model(model), str(model)


def _wrapper(model: TTFNetModule, input_size: Sequence[int] | None, topk: int | None) -> DetectionExport:
    H, W = (int(v) for v in (input_size or model.input_size))
    if H % 32 or W % 32:
        raise ValueError(f"input_size must be multiples of 32 (the backbone's stride), got {H}x{W}")
    k = int(topk if topk is not None else model.hparams.decode["topk"])
    if k < 1:
        raise ValueError(f"topk must be >= 1, got {k}")
    convention = model.hparams.decode.get("box_convention", "continuous")
    return DetectionExport(exportable_net(model), input_size=(H, W), topk=k, box_convention=convention).eval()


def check_export_output(output: str | Path, model: TTFNetModule | str | Path | None = None) -> Path:
    """``output`` once the model and its metadata file (:func:`metadata_path`) can be written there,
    checked before any work; missing parent folders are created.

    Raises:
        OutputPathError: ``output`` is an existing folder or ends in a slash, a parent is a file,
            the folder cannot be written, the metadata file would be the model itself (``.json``
            output) or is a folder, or either would overwrite the source checkpoint ``model``.
    """
    protected = [] if model is None or isinstance(model, TTFNetModule) else [model]
    output = check_output_file(output, what="export output", protected=protected)
    meta = metadata_path(output)
    if same_file(meta, output):
        raise OutputPathError(
            f"export output {output}: its metadata file would be {meta}, the model itself; "
            "use a model suffix (.onnx, .pt2, .pt)"
        )
    check_output_file(meta, what=f"export output {output}: its metadata file", protected=protected)
    return output


def _example(wrapper: DetectionExport, batch: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, *wrapper.input_size), dtype=torch.uint8, generator=g)


def export_onnx(
    model: TTFNetModule | str | Path,
    output: str | Path,
    *,
    input_size: Sequence[int] | None = None,
    topk: int | None = None,
    opset: int = 17,
    check: bool = True,
) -> dict[str, Any]:
    """Write ``output`` (ONNX: normalisation + network + fixed-K decoder, dynamic batch) and its
    metadata file; returns the metadata (with ``check`` results when ``check``). The output path is
    checked first (:func:`check_export_output`: ``OutputPathError``); nothing is written to it
    unless the export (and its check) succeeded, and no temporary file outlives a failure.

    Args:
        model: a :class:`TTFNetModule` or a checkpoint path (:func:`~ttfnet_lightning.training.checkpoints.load_model`).
        output: the ``.onnx`` file to write.
        input_size: (H, W); default the checkpoint's training size.
        topk: K; default the checkpoint's ``decode.topk``.
        opset: ONNX opset (>= 16 for GridSample).
        check: ``onnx.checker`` and one onnxruntime run on a random batch of 2 compared with PyTorch.
    """
    onnx = import_onnx()
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (ONNX GridSample, used by the deformable convs), got {opset}")
    output = check_export_output(output, model)
    module, source = _load(model)
    wrapper = _wrapper(module, input_size, topk)
    meta = _metadata(module, wrapper, fmt="onnx", source=source, opset=int(opset))

    def write(tmp: Path) -> None:
        _onnx_file(onnx, wrapper, tmp, opset=int(opset), meta=meta)

    def verify(tmp: Path) -> None:
        onnx.checker.check_model(str(tmp))
        meta["check"] = check_exported_onnx(tmp, wrapper, _example, meta["score_threshold"])

    write_with_sidecar(
        output,
        write,
        sidecar=metadata_path(output),
        sidecar_text=lambda: json.dumps(meta, indent=1),
        check=verify if check else None,
    )
    log.info("wrote %s and %s", output, metadata_path(output))
    return meta


def _onnx_file(onnx: Any, wrapper: DetectionExport, tmp: Path, *, opset: int, meta: dict[str, Any]) -> None:
    """The ONNX graph of ``wrapper`` written to ``tmp``, ``meta`` in its ``metadata_props``."""
    example = _example(wrapper)
    axes = {"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}, "labels": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated in favour of dynamo=True, which needs onnxscript;
        # tracer warnings come from the deform conv's shape checks (constants for a fixed input size)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=int(opset),
            input_names=["images"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {"ttfnet_lightning": json.dumps(meta)})
    proto.producer_name = "ttfnet-lightning"
    onnx.save(proto, str(tmp))


def export_torchscript(
    model: TTFNetModule | str | Path,
    output: str | Path,
    *,
    input_size: Sequence[int] | None = None,
    topk: int | None = None,
) -> dict[str, Any]:
    """The same graph as :func:`export_onnx` as TorchScript (``torch.jit.trace``; load with
    ``torch.jit.load(path)``, also from C++ libtorch, no ttfnet-lightning needed), with the same
    metadata file (also stored in the archive as ``extra/ttfnet_lightning.json``). Dynamic batch.
    PyTorch deprecates TorchScript (warnings from torch.jit); ``format=pt2`` is its successor."""
    output = check_export_output(output, model)
    module, source = _load(model)
    wrapper = _wrapper(module, input_size, topk)
    meta = _metadata(module, wrapper, fmt="torchscript", source=source, opset=None)

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            traced = torch.jit.trace(wrapper, (_example(wrapper),), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"ttfnet_lightning.json": json.dumps(meta)})

    write_with_sidecar(output, write, sidecar=metadata_path(output), sidecar_text=lambda: json.dumps(meta, indent=1))
    return meta


def export_pt2(
    model: TTFNetModule | str | Path,
    output: str | Path,
    *,
    input_size: Sequence[int] | None = None,
    topk: int | None = None,
) -> dict[str, Any]:
    """The same graph as :func:`export_onnx` as a ``torch.export`` program (``.pt2``; run with
    ``torch.export.load(path).module()(images)``, no ttfnet-lightning needed; AOTInductor can
    compile it), dynamic batch, with the same metadata file (also inside, as ``ttfnet_lightning.json``)."""
    output = check_export_output(output, model)
    module, source = _load(model)
    wrapper = _wrapper(module, input_size, topk)
    meta = _metadata(module, wrapper, fmt="pt2", source=source, opset=None)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(wrapper, (_example(wrapper),), dynamic_shapes={"images": {0: batch}})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: torch.export.save wants a ".pt2" name otherwise
            torch.export.save(program, f, extra_files={"ttfnet_lightning.json": json.dumps(meta)})

    write_with_sidecar(output, write, sidecar=metadata_path(output), sidecar_text=lambda: json.dumps(meta, indent=1))
    return meta


def export_model(
    ckpt: str | Path | TTFNetModule, output: str | Path, *, format: str = "onnx", **options: Any
) -> dict[str, Any]:
    """:func:`export_onnx`, :func:`export_pt2` or :func:`export_torchscript` by ``format``."""
    if format == "onnx":
        return export_onnx(ckpt, output, **options)
    if format in ("torchscript", "pt2"):
        options.pop("opset", None)
        options.pop("check", None)
        return (export_torchscript if format == "torchscript" else export_pt2)(ckpt, output, **options)
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")


def export(cfg: Any) -> dict[str, Any]:
    """``python -m ttfnet_lightning.export`` without Hydra's wrapper (``cfg``: conf/export.yaml)."""
    options: dict[str, Any] = {
        "input_size": list(cfg.input_size) if cfg.get("input_size") else None,
        "topk": cfg.get("topk"),
        "opset": int(cfg.get("opset", 17)),
        "check": bool(cfg.get("check", True)),
    }
    meta = export_model(cfg.ckpt, cfg.output, format=str(cfg.get("format", "onnx")), **options)
    H, W = meta["input_size"]
    print(
        f"exported {cfg.ckpt} -> {cfg.output} ({meta['model_format']}, input (B, 3, {H}, {W}) uint8 RGB, "
        f"top-{meta['topk']}, "
        f"{meta['num_classes']} classes) + {metadata_path(cfg.output)}"
    )
    if "check" in meta:
        c = meta["check"]["batch2"]
        print(
            f"onnxruntime vs PyTorch (random batch of 2): max box diff {c['max_box_diff_px']:.2e} px, max score diff "
            f"{c['max_score_diff']:.2e}, labels equal {c['label_agreement']:.3f} ({c['compared']} detections above the "
            "threshold)"
        )
    return meta
