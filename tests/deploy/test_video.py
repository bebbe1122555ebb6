"""predict on a video file (deploy/video.py) and on a glob pattern (deploy/predict_files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torchvision.io import write_png

from conftest import compose
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.deploy.output_files import OutputPathError
from ttfnet_lightning.deploy.predict import predict
from ttfnet_lightning.deploy.predict_files import list_images
from ttfnet_lightning.training.lit_module import TTFNetModule

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

SHAPES = ["circle", "square", "triangle", "star", "cross"]
FRAMES, H, W = 10, 71, 96  # an odd height: the annotated video drops the last row (yuv420p)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny model whose decoder keeps every peak (score threshold 0): it detects on any frame."""
    torch.manual_seed(0)
    module = TTFNetModule(
        net={"backbone": "r18", "deformable": False, "frozen_stages": -1},
        decode={"topk": 5, "score_threshold": 0.0},
        data_info={"num_classes": 5, "class_names": SHAPES, "input_size": [64, 64], "label_to_cat_id": None},
    ).eval()
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def write_video(path: Path) -> None:
    """FRAMES frames of a bright square moving over a gradient, MPEG-4 at 10 frames/s."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H - 1, "yuv420p"
        for i in range(FRAMES):
            img = torch.linspace(0, 200, W, dtype=torch.float32).expand(H - 1, W).clone()
            img[10:40, 5 + 6 * i : 35 + 6 * i] = 255
            rgb = img.to(torch.uint8).unsqueeze(-1).expand(-1, -1, 3).contiguous().numpy()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())


def decoded_frames(path: Path) -> list[torch.Tensor]:
    with av.open(str(path)) as src:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in src.decode(video=0)]


def run(ckpt: Path, src: Path | str, out: Path, *extra: str) -> dict:
    return predict(compose("predict", [f"ckpt={ckpt}", f"input={src}", f"output={out}", "device=cpu", *extra]))


def test_video_detections_equal_those_of_its_frames_as_images(ckpt, tmp_path):
    """Every frame goes through the model once, in order, and gets the detections the same frame gets
    as an image file (same resize, network and decoder); the annotated video has every frame, at the
    input's rate and size, with the boxes drawn."""
    video = tmp_path / "clip.avi"
    write_video(video)
    frames = decoded_frames(video)
    assert len(frames) == FRAMES
    summary = run(ckpt, video, tmp_path / "out", "batch_size=3", "draw_threshold=0.0")
    assert summary["num_images"] == FRAMES
    got = json.loads((tmp_path / "out" / "detections.json").read_text())
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames):
        write_png(frame, str(tmp_path / "frames" / f"{i:03d}.png"))
    run(ckpt, tmp_path / "frames", tmp_path / "as_images", "batch_size=4")
    want = json.loads((tmp_path / "as_images" / "detections.json").read_text())
    assert len(got) == len(want) == FRAMES * 5  # topk 5 per frame, threshold 0
    key = lambda d: (d["image_id"], -d["score"], d["category_id"])  # noqa: E731
    for g, w in zip(sorted(got, key=key), sorted(want, key=key)):
        assert (g["image_id"], g["category_id"]) == (w["image_id"], w["category_id"])
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        assert g["bbox"] == pytest.approx(w["bbox"], abs=1e-3)
    annotated = decoded_frames(tmp_path / "out" / "clip.mp4")
    assert len(annotated) == FRAMES and annotated[0].shape == (3, H - 1, W)
    assert (annotated[0].float() - frames[0].float()).abs().mean() > 1.0  # boxes drawn on it
    info = json.loads((tmp_path / "out" / "video.json").read_text())
    assert info["frames"] == FRAMES and info["fps"] == 10.0 and info["output"] == "clip.mp4"
    assert [c["name"] for c in info["categories"]] == SHAPES


def test_video_errors_name_the_file_and_never_touch_the_input(ckpt, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match="broken.mp4"):
        run(ckpt, bad, tmp_path / "out")
    assert not (tmp_path / "out" / "broken.mp4").exists()
    video = tmp_path / "clip.mp4"
    write_video(video)
    before = video.read_bytes()
    with pytest.raises(OutputPathError, match="input"):
        run(ckpt, video, tmp_path)  # the annotated clip.mp4 would replace the input
    assert video.read_bytes() == before


def test_glob_patterns_select_images(ckpt, tmp_path):
    """``input='dir/*.png'`` reads the matching images only, sorted; a pattern matching no image is
    refused naming it; detections.json's image ids follow the sorted matches."""
    src = tmp_path / "imgs"
    src.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name in ("b.png", "a.png", "c.jpg.txt", "d.png"):
        write_png(torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8, generator=gen), str(src / name))
    assert [p.name for p in list_images(src / "*.png")] == ["a.png", "b.png", "d.png"]
    assert [p.name for p in list_images(src / "[ab].png")] == ["a.png", "b.png"]
    with pytest.raises(FileNotFoundError, match=r"matches the pattern .*\*\.jpeg"):
        list_images(src / "*.jpeg")
    summary = run(ckpt, f"'{src}/[ab].png'", tmp_path / "out")
    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert summary["num_images"] == 2 and [i["file_name"] for i in images] == ["a.png", "b.png"]
    with pytest.raises(OutputPathError, match="input folder"):
        run(ckpt, f"{src}/*.png", src)


def test_draw_threshold_defaults_to_the_runs_f1_best_threshold(ckpt, tmp_path, capsys):
    """``draw_threshold=null`` (the default): the best threshold of the error analysis in the
    checkpoint's run folder; a given value wins; no analysis: 0.3."""
    from omegaconf import OmegaConf

    from ttfnet_lightning.deploy.predict_files import draw_threshold

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    moved = run / "checkpoints" / "last.ckpt"
    moved.write_bytes(ckpt.read_bytes())
    cfg = OmegaConf.create({"ckpt": str(moved), "draw_threshold": None})
    assert draw_threshold(cfg) == 0.3 and "no error analysis" in capsys.readouterr().out
    (run / "analysis").mkdir()
    (run / "analysis" / "summary.json").write_text(json.dumps({"best_score_threshold": 0.42}))
    assert draw_threshold(cfg) == pytest.approx(0.42)
    assert draw_threshold(OmegaConf.create({"ckpt": str(moved), "draw_threshold": 0.7})) == 0.7
    src = tmp_path / "imgs"
    src.mkdir()
    write_png(torch.full((3, 40, 48), 128, dtype=torch.uint8), str(src / "a.png"))
    capsys.readouterr()
    predict(compose("predict", [f"ckpt={moved}", f"input={src}", f"output={tmp_path / 'out'}", "device=cpu"]))
    assert "draw_threshold 0.420: the F1-best score threshold" in capsys.readouterr().out
