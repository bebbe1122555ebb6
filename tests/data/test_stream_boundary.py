"""Safe at the boundary, streams (issue 21, items 2 and 6): ``prepare`` never writes into, deletes or
replaces its source or any folder that is not a stream folder it wrote (``overwrite`` included);
a prepared stream's chunks are checked at setup (present, recorded size, recorded sha256) and a
read that fails at run time names the chunk and the item. Tiny synthetic COCO in tmp_path."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("litdata", reason="the streaming tests need litdata (pip install 'ttfnet-lightning[stream]')")

from ttfnet_lightning.data import CocoStreamDataModule, DataError, stream_verify  # noqa: E402
from ttfnet_lightning.data import prepare as data_prepare  # noqa: E402
from ttfnet_lightning.data.stream_folder import MARKER, check_output  # noqa: E402

SPLIT_SIZES = {"train": 6, "val": 3}
CHUNK = "train/chunk-0-0.bin"


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _coco(root: Path) -> Path:
    """COCO layout: annotations/instances_{train,val}.json, train/, val/ (64x48 JPEGs, one box each)."""
    (root / "annotations").mkdir(parents=True)
    for split, n in SPLIT_SIZES.items():
        (root / split).mkdir()
        for i in range(n):
            (root / split / f"a{i}.jpg").write_bytes(_jpeg(i))
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(
                {
                    "images": [{"id": 100 + i, "file_name": f"a{i}.jpg", "width": 64, "height": 48} for i in range(n)],
                    "annotations": [
                        {
                            "id": 1 + i,
                            "image_id": 100 + i,
                            "category_id": 3,
                            "bbox": [2, 3, 20, 10],
                            "iscrowd": 0,
                            "area": 200.0,
                        }
                        for i in range(n)
                    ],
                    "categories": [{"id": 3, "name": "thing"}],
                }
            )
        )
    return root


def _args(root: Path, output: Path | str, *extra: str) -> list[str]:
    return [
        "data=coco",
        f"data.datamodule.root={root}",
        "data.datamodule.train_split=train",
        "data.datamodule.val_split=val",
        f"data.datamodule.check_cache_dir={root.parent / 'check-cache'}",
        f"output={output}",
        "chunk_bytes=20kb",
        *extra,
    ]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _coco(tmp_path_factory.mktemp("src") / "coco")


@pytest.fixture(scope="module")
def prepared(source: Path) -> Path:
    out = source.parent / "stream"
    assert data_prepare.main(_args(source, out)) == 0
    assert len(list((out / "train").glob("chunk-*.bin"))) >= 2  # several chunks
    return out


@pytest.fixture
def stream(prepared: Path, tmp_path: Path) -> Path:
    """A fresh copy of the prepared stream for one test to damage."""
    return Path(shutil.copytree(prepared, tmp_path / "stream"))


def _dm(path: Path | str, **kw) -> CocoStreamDataModule:
    return CocoStreamDataModule(input_dir=str(path), input_size=(64, 64), batch_size=2, num_workers=0, **kw)


# ------------------------------------------------------------------ 2. prepare's output and overwrite


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_equal_to_the_source_is_refused_and_the_source_kept(source: Path, overwrite: bool, capsys):
    before = _snapshot(source)
    for output in (
        source,
        source.parent / "." / source.name,
        f"{source}/train/..",
        source / "train",
        source / "new",
        source.parent,
    ):
        assert data_prepare.main(_args(source, output, f"overwrite={str(overwrite).lower()}")) == 1, output
        err = capsys.readouterr().err
        assert "source data" in err and str(source) in err, err
        assert _snapshot(source) == before
    link = source.parent / "link-to-source"
    link.symlink_to(source)
    try:
        assert data_prepare.main(_args(source, link, f"overwrite={str(overwrite).lower()}")) == 1
        assert "source data" in capsys.readouterr().err and _snapshot(source) == before
    finally:
        link.unlink()


def test_overwrite_never_touches_a_folder_prepare_did_not_write(source: Path, tmp_path: Path, capsys):
    mine = tmp_path / "mine"
    for rel in ("annotations/keep.json", "train/photo.jpg", "val/x.bin", "notes.txt"):
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        (mine / rel).write_text(rel)
    before = _snapshot(mine)
    for flag in ("overwrite=false", "overwrite=true"):
        assert data_prepare.main(_args(source, mine, flag)) == 1
        err = capsys.readouterr().err
        assert str(mine) in err and "not a stream folder" in err, err
        assert _snapshot(mine) == before
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert data_prepare.main(_args(source, a_file, "overwrite=true")) == 1
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "mine"


def test_overwrite_refuses_a_stream_folder_holding_the_users_files(stream: Path, source: Path, capsys):
    for extra in ("my-notes.txt", "train/extra.jpg", "annotations/sub"):
        path = stream / extra
        path.mkdir() if extra.endswith("sub") else path.write_text("mine")
        before = _snapshot(stream)
        assert data_prepare.main(_args(source, stream, "overwrite=true")) == 1
        err = capsys.readouterr().err
        assert Path(extra).name in err and "prepare does not write" in err, err
        assert _snapshot(stream) == before
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_home_root_and_inside_a_stream_are_refused(stream: Path, source: Path, tmp_path: Path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # before the fix "~" was a folder of that name here
    before = _snapshot(tmp_path)
    for output in ("~", home, stream / "train", stream / "new"):
        assert data_prepare.main(_args(source, output, "overwrite=true")) == 1, output
        assert "choose" in capsys.readouterr().err
        assert _snapshot(tmp_path) == before
    with pytest.raises(DataError, match="contains the source data"):
        check_output("/", sources=[source], overwrite=True)  # (not run through main: the old code wrote /train)


def test_overwrite_replaces_an_earlier_prepare(stream: Path, source: Path, capsys):
    assert data_prepare.main(_args(source, stream)) == 1
    assert "overwrite=true replaces it" in capsys.readouterr().err
    (stream / "train" / "chunk-0-9.bin").write_bytes(b"left by an earlier run")  # litdata's name: ours to delete
    assert data_prepare.main(_args(source, stream, "overwrite=true")) == 0
    assert not (stream / "train" / "chunk-0-9.bin").exists() and (stream / MARKER).is_file()
    for name in (MARKER, "checksums.json"):  # a stream prepared before the marker and checksums existed
        (stream / name).unlink()
    assert data_prepare.main(_args(source, stream, "overwrite=true")) == 0
    assert (stream / MARKER).is_file() and (stream / "checksums.json").is_file()


# ------------------------------------------------------------------ 6. chunks checked at setup


def test_an_intact_stream_sets_up_and_reads(stream: Path):
    dm = _dm(stream)
    dm.setup("fit")
    ids = [t["image_id"] for _, t in (dm.train_dataset[i] for i in range(len(dm.train_dataset)))]
    assert ids == dm.train_dataset.image_ids and len(ids) == SPLIT_SIZES["train"]


@pytest.mark.parametrize(
    "damage, why",
    [
        ("delete", "missing"),
        ("zero", "content differs from the sha256"),
        ("truncate", "bytes, the index says"),
        ("grow", "bytes, the index says"),
    ],
    ids=["delete", "zero", "truncate", "grow"],
)
def test_a_damaged_chunk_fails_setup_naming_it(stream: Path, damage: str, why: str):
    chunk = stream / CHUNK
    data = chunk.read_bytes()
    if damage == "delete":
        chunk.unlink()
    elif damage == "zero":
        chunk.write_bytes(bytes(len(data)))
    elif damage == "truncate":
        chunk.write_bytes(data[: len(data) // 2])
    else:
        chunk.write_bytes(data + b"\0")
    dm = _dm(stream)
    with pytest.raises(DataError, match="split 'train'") as e:
        dm.setup("fit")
    assert str(chunk) in str(e.value) and why in str(e.value)


def test_an_edited_index_fails_setup(stream: Path):
    index = stream / "train" / "index.json"
    data = json.loads(index.read_text())
    chunk = stream / "train" / data["chunks"][0]["filename"]
    chunk.write_bytes(chunk.read_bytes()[:100])
    data["chunks"][0]["chunk_bytes"] = 100  # an index edited to match a truncated chunk
    index.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"(?s)split 'train'.*differs from the index prepare wrote"):
        _dm(stream).setup("fit")


def test_digests_are_cached_but_a_change_is_seen(stream: Path, monkeypatch):
    old = time.time() - 3600
    for p in stream.glob("*/chunk-*.bin"):
        os.utime(p, (old, old))
    calls: list[str] = []
    real = stream_verify.file_sha256
    monkeypatch.setattr(stream_verify, "file_sha256", lambda p: calls.append(Path(p).name) or real(p))
    _dm(stream).setup("fit")
    assert any(c.startswith("chunk-") for c in calls)
    calls.clear()
    _dm(stream).setup("fit")
    assert not [c for c in calls if c.startswith("chunk-")], calls  # unchanged files: not hashed again
    chunk = stream / CHUNK
    chunk.write_bytes(bytes(chunk.stat().st_size))
    os.utime(chunk, (old, old))  # same size, mtime put back: the ctime and the content still tell
    with pytest.raises(DataError, match="content differs"):
        _dm(stream).setup("fit")


def test_a_stream_without_checksums_still_loads_with_a_note(stream: Path, caplog):
    (stream / "checksums.json").unlink(missing_ok=True)
    (stream / MARKER).unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        dm = _dm(stream)
        dm.setup("fit")
    assert any("cannot be verified" in r.getMessage() for r in caplog.records)
    assert len([dm.val_dataset[i] for i in range(len(dm.val_dataset))]) == SPLIT_SIZES["val"]
    (stream / CHUNK).unlink()  # sizes and presence are still checked
    with pytest.raises(DataError, match="missing"):
        _dm(stream).setup("fit")


# ------------------------------------------------------------------ 6. reads that fail name chunk and item


def _read_all(ds) -> None:
    for i in range(len(ds)):
        ds[i]


@pytest.mark.parametrize("damage", ["delete", "truncate", "zero-data"])
def test_a_chunk_damaged_after_setup_fails_the_read_naming_it(stream: Path, damage: str):
    dm = _dm(stream, skip_bad_images=False)
    dm.setup("fit")
    chunk = stream / CHUNK
    data = chunk.read_bytes()
    if damage == "delete":
        chunk.unlink()
    elif damage == "truncate":
        chunk.write_bytes(data[:1000])
    else:  # header kept, the items zeroed: litdata cannot reshape the fields
        chunk.write_bytes(data[:100] + bytes(len(data) - 100))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        _read_all(dm.train_dataset)
    msg = str(e.value)
    assert str(chunk) in msg and "item 0 (image id 100)" in msg and "split 'train'" in msg, msg
    assert time.perf_counter() - t0 < 1.5  # at once, not after litdata's wait for the chunk


def test_a_url_stream_checks_each_chunk_after_its_download(stream: Path, tmp_path: Path):
    chunk = stream / "train" / "chunk-0-1.bin"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-10] + bytes(10))  # same size: only the checksum tells
    dm = _dm(f"local:{stream}", cache_dir=str(tmp_path / "cache"), skip_bad_images=False)
    dm.setup("fit")  # the chunks are not here yet: the index is checked against the checksums
    with pytest.raises(DataError, match=r"chunk-0-1\.bin.*sha256") as e:
        _read_all(dm.train_dataset)
    assert "image id 105" in str(e.value)
    chunk.write_bytes(data)
    good = _dm(f"local:{stream}", cache_dir=str(tmp_path / "cache2"))
    good.setup("fit")
    _read_all(good.train_dataset)
    (stream / "train" / "index.json").write_text(
        (stream / "train" / "index.json").read_text().replace('"chunk_size": 1', '"chunk_size": 2')
    )
    with pytest.raises(DataError, match="split 'train'"):
        _dm(f"local:{stream}", cache_dir=str(tmp_path / "cache3")).setup("fit")
