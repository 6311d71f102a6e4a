"""hfmm.training.clip.data: formats, transforms, bad samples, streaming, the collator."""

import csv
import io
import json
import logging
import tarfile
from pathlib import Path

import datasets
import open_clip
import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from hfmm.models.clip.processing_clip import HfmmCLIPProcessor
from hfmm.training.clip.arguments import CLIPDataArguments
from hfmm.training.clip.data import (
    SKIP_REASONS,
    CLIPCollator,
    build_eval_dataset,
    build_train_dataset,
    expand_shards,
    resolve_format,
    train_image_transform,
)

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 200, 200), (200, 40, 200)]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture(scope="module")
def processor():
    return HfmmCLIPProcessor.from_vision_config(tiny_clip_config().vision_config)  # 30 x 30 images


def image(i: int, size=(40, 34), mode="RGB") -> Image.Image:
    picture = Image.new("RGB", size, COLOURS[i % len(COLOURS)])
    picture.paste((255, 255, 255), (i, i, i + 8, i + 5))  # make every image different
    return picture.convert(mode)


def png_bytes(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict], separator: str = ",") -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), delimiter=separator)
        writer.writeheader()
        writer.writerows(rows)
    return path


def captioned_folder(root: Path, n: int) -> list[dict]:
    """n PNGs under root/images and their rows (relative paths)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        (root / "images" / f"{i}.png").write_bytes(png_bytes(i))
        rows.append({"image": f"images/{i}.png", "caption": f"a picture number {i}"})
    return rows


def write_shard(path: Path, samples: list[tuple[str, str, bytes, str]]) -> Path:
    """(key, image extension, image bytes, caption) samples in img2dataset's layout, with a .json member each."""
    with tarfile.open(path, "w") as tar:
        for key, extension, data, caption in samples:
            members = [(f"{key}.{extension}", data), (f"{key}.txt", caption.encode()), (f"{key}.json", b"{}")]
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def ids_of(processor, captions: list[str]) -> torch.Tensor:
    return processor.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")[
        "input_ids"
    ]


def collate_all(dataset, batch_size: int, collator=None) -> list[dict]:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator or CLIPCollator(), drop_last=True)
    return list(loader)


# ---------------------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------------------


def test_csv_pairs_become_model_inputs(tmp_path, processor):
    rows = captioned_folder(tmp_path, 3)
    rows[2]["caption"] = "NA"  # must stay the text "NA", not become a missing value
    path = write_csv(tmp_path / "pairs.tsv", rows, separator="\t")
    dataset = build_train_dataset(CLIPDataArguments(train_data=str(path), csv_separator="\t"), processor)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 3
    example = dataset[0]
    assert example["pixel_values"].shape == (3, 30, 30) and example["pixel_values"].dtype == torch.float32
    assert example["input_ids"].shape == (77,) and example["input_ids"].dtype == torch.int64
    assert example["skip_reason"] is None
    batch = CLIPCollator()(dataset.__getitems__([0, 1, 2]))
    assert batch.keys() == {"pixel_values", "input_ids"}
    assert torch.equal(batch["input_ids"], ids_of(processor, [row["caption"] for row in rows]))


def test_jsonl_pairs_with_relative_and_absolute_paths(tmp_path, processor):
    rows = captioned_folder(tmp_path, 2)
    rows[1]["image"] = str(tmp_path / rows[1]["image"])
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"file": r["image"], "text": r["caption"]}) + "\n" for r in rows))
    args = CLIPDataArguments(eval_data=str(path), image_column="file", caption_column="text")
    batch = CLIPCollator()(list(build_eval_dataset(args, processor)))
    assert batch["pixel_values"].shape == (2, 3, 30, 30)
    assert torch.equal(batch["input_ids"], ids_of(processor, [r["caption"] for r in rows]))


def webdataset_shards(folder: Path) -> list[str]:
    folder.mkdir()
    write_shard(folder / "00000.tar", [(f"{i:05d}", "jpg", jpeg_bytes(i), f"caption {i}") for i in range(6)])
    write_shard(
        folder / "00001.tar",
        [("00006", "png", png_bytes(6), "caption 6"), ("00007", "jpeg", jpeg_bytes(7), "caption 7")],
    )
    return [f"caption {i}" for i in range(8)]


@pytest.mark.parametrize(
    "spec",
    [
        "ROOT/shards",
        "ROOT/shards/*.tar",
        "ROOT/shards/{00000..00001}.tar",
        "ROOT/shards/00000.tar::ROOT/shards/00001.tar",
    ],
)
def test_webdataset_shards_as_folder_glob_braces_or_list(tmp_path, processor, spec):
    captions = webdataset_shards(tmp_path / "shards")
    args = CLIPDataArguments(eval_data=spec.replace("ROOT", str(tmp_path)))
    assert resolve_format(args.eval_data) == "webdataset"
    batch = CLIPCollator()(list(build_eval_dataset(args, processor)))
    # A .png and a .jpeg after five .jpg samples: every image key is read, not only those of the first samples.
    assert batch["pixel_values"].shape == (8, 3, 30, 30)
    assert torch.equal(batch["input_ids"], ids_of(processor, captions))


@pytest.mark.parametrize("metadata", ["metadata.jsonl", "metadata.csv"])
def test_imagefolder_with_metadata_captions(tmp_path, processor, metadata):
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
        rows.append({"file_name": f"{i}.png", "caption": f"image {i}"})
    if metadata.endswith(".csv"):
        write_csv(folder / metadata, rows)
    else:
        (folder / metadata).write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = CLIPDataArguments(eval_data=str(folder))
    assert resolve_format(args.eval_data) == "imagefolder"
    dataset = build_eval_dataset(args, processor)
    batch = CLIPCollator()(list(dataset))
    expected = processor.image_processor([Image.open(folder / r["file_name"]) for r in rows])["pixel_values"]
    order = sorted(range(3), key=lambda i: ids_of(processor, [rows[i]["caption"]])[0].tolist())
    got = sorted(range(3), key=lambda i: batch["input_ids"][i].tolist())
    assert torch.equal(batch["pixel_values"][got], expected[order])


def test_brace_expansion_and_format_inference(tmp_path):
    for name in ("a-007.tar", "a-008.tar", "a-009.tar", "a-010.tar"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(p).name for p in expand_shards(str(tmp_path / "a-{007..010}.tar"))] == [
        "a-007.tar",
        "a-008.tar",
        "a-009.tar",
        "a-010.tar",
    ]
    assert [Path(p).name for p in expand_shards(str(tmp_path / "a-{007,010}.tar"))] == ["a-007.tar", "a-010.tar"]
    assert resolve_format("x/train.csv") == "csv" and resolve_format("x/train.jsonl") == "jsonl"
    assert resolve_format("/data/{000..100}.tar") == "webdataset"
    assert resolve_format("anything", "imagefolder") == "imagefolder"


def test_clear_errors_for_bad_paths_formats_and_columns(tmp_path, processor):
    rows = captioned_folder(tmp_path, 1)
    path = write_csv(tmp_path / "pairs.csv", rows)
    cases = [
        (CLIPDataArguments(train_data=str(tmp_path / "missing.csv")), "does not exist"),
        (CLIPDataArguments(train_data=str(path), caption_column="title"), "no column 'title'"),
        (CLIPDataArguments(train_data=str(tmp_path / "notes.txt")), "Cannot infer the data format"),
        (CLIPDataArguments(train_data=str(tmp_path / "images")), "no column 'caption'"),  # imagefolder, no metadata
        (CLIPDataArguments(train_data=str(tmp_path / "{0..2}.tar")), "does not exist"),
        (CLIPDataArguments(train_data=str(path), rrc_scale=(1.0, 0.5)), "rrc_scale"),
        (CLIPDataArguments(), "train_data is not set"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            build_train_dataset(args, processor)
    with pytest.raises(ValueError, match="key data_format has value 'parquet'; expected 'auto' | 'csv'"):
        CLIPDataArguments(train_data=str(path), data_format="parquet")


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------


def test_train_transform_is_open_clips(processor):
    args = CLIPDataArguments(rrc_scale=(0.5, 1.0))
    ours = train_image_transform(processor.image_processor, args)
    image_processor = processor.image_processor
    reference = open_clip.image_transform(
        30,
        is_train=True,
        mean=image_processor.image_mean,
        std=image_processor.image_std,
        aug_cfg={"scale": (0.5, 1.0)},
    )
    for i, mode in enumerate(["RGB", "P", "RGBA"]):
        picture = image(i, size=(52, 37), mode=mode)
        torch.manual_seed(i)
        expected = reference(picture)
        torch.manual_seed(i)
        got = ours(picture)
        assert got.shape == (3, 30, 30) and torch.equal(got, expected)
    low = (0 - torch.tensor(image_processor.image_mean)) / torch.tensor(image_processor.image_std)
    high = (1 - torch.tensor(image_processor.image_mean)) / torch.tensor(image_processor.image_std)
    assert ((got >= low[:, None, None] - 1e-6) & (got <= high[:, None, None] + 1e-6)).all()


def test_full_scale_crop_is_a_bicubic_resize(processor):
    args = CLIPDataArguments(rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))
    picture = image(0, size=(45, 45))
    resized = T.Compose([T.Resize(30, T.InterpolationMode.BICUBIC), T.ToTensor()])(picture)
    mean, std = (
        torch.tensor(v)[:, None, None]
        for v in (processor.image_processor.image_mean, processor.image_processor.image_std)
    )
    assert torch.allclose(
        train_image_transform(processor.image_processor, args)(picture), (resized - mean) / std, atol=1e-6
    )


def test_random_erasing_overwrites_one_rectangle_with_noise(processor):
    plain = train_image_transform(processor.image_processor, CLIPDataArguments())
    erasing = train_image_transform(processor.image_processor, CLIPDataArguments(re_prob=1.0, re_count=1))
    picture = image(1, size=(40, 40))
    torch.manual_seed(0)
    expected = plain(picture)
    torch.manual_seed(0)
    got = erasing(picture)
    changed = (got != expected).any(dim=0)  # (H, W)
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    assert changed.sum() > 0
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and changed.sum() == box.numel()  # one filled rectangle, everything else untouched
    assert got[:, changed].std() > 0.5  # per-pixel normal noise ("pixel" mode)


def test_eval_transform_equals_the_processor(tmp_path, processor):
    (tmp_path / "images").mkdir()
    pictures = [image(0, (64, 48)), image(1, (31, 90), "RGBA"), image(2, (30, 30), "P"), image(3, (50, 50), "L")]
    rows = []
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "caption": "x"})
    dataset = build_eval_dataset(CLIPDataArguments(eval_data=str(write_csv(tmp_path / "eval.csv", rows))), processor)
    for i, example in enumerate(dataset):
        expected = processor(images=Image.open(tmp_path / rows[i]["image"]))["pixel_values"][0]
        assert torch.equal(example["pixel_values"], expected)


# ---------------------------------------------------------------------------------------------------------------------
# Bad samples
# ---------------------------------------------------------------------------------------------------------------------


def bad_csv(tmp_path: Path) -> tuple[Path, set[str]]:
    """4 good rows, then missing file, truncated JPEG, empty caption, non-image file, whitespace caption + 3 good."""
    rows = captioned_folder(tmp_path, 7)
    (tmp_path / "images" / "truncated.jpg").write_bytes(jpeg_bytes(0)[:300])
    (tmp_path / "images" / "text.png").write_text("not an image")
    bad = [
        {"image": "images/gone.png", "caption": "a missing image"},
        {"image": "images/truncated.jpg", "caption": "a truncated jpeg"},
        {"image": "images/0.png", "caption": ""},
        {"image": "images/text.png", "caption": "not an image"},
        {"image": "images/1.png", "caption": "  \t "},
    ]
    good_captions = {row["caption"] for row in rows}
    return write_csv(tmp_path / "pairs.csv", rows[:4] + bad + rows[4:]), good_captions


EXPECTED_SKIPS = {"missing_image": 1, "corrupt_image": 2, "empty_caption": 2}


def test_bad_samples_are_skipped_counted_and_replaced(tmp_path, processor, caplog):
    path, good_captions = bad_csv(tmp_path)
    dataset = build_train_dataset(CLIPDataArguments(train_data=str(path)), processor)
    good_ids = {tuple(ids) for ids in ids_of(processor, sorted(good_captions)).tolist()}
    collator = CLIPCollator()
    with caplog.at_level(logging.WARNING, logger="hfmm.training.clip.data"):
        batches = collate_all(dataset, batch_size=4, collator=collator)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 4]  # 12 rows, 5 bad: every batch still full
    assert all(tuple(ids) in good_ids for b in batches for ids in b["input_ids"].tolist())
    assert all(torch.isfinite(b["pixel_values"]).all() for b in batches)
    assert collator.skipped == EXPECTED_SKIPS == collator.skipped_counts()
    assert collator.replaced == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "hfmm.training.clip.data"]
    assert len(warnings) == 3 and all(any(reason.replace("_", " ") in w for w in warnings) for reason in SKIP_REASONS)
    collate_all(dataset, batch_size=4, collator=collator)  # a second epoch: counts add up, no new warnings
    assert collator.skipped == {reason: 2 * count for reason, count in EXPECTED_SKIPS.items()}
    assert len([r for r in caplog.records if r.name == "hfmm.training.clip.data"]) == 3


def test_counts_add_up_over_dataloader_workers(tmp_path, processor):
    path, _ = bad_csv(tmp_path)
    dataset = build_eval_dataset(CLIPDataArguments(eval_data=str(path)), processor)
    collator = CLIPCollator()
    # Batches of 3 alternate between the workers; each worker's first batch holds a good sample.
    loader = DataLoader(dataset, batch_size=3, collate_fn=collator, num_workers=2, multiprocessing_context="fork")
    sizes = [len(batch["input_ids"]) for batch in loader]
    assert sizes == [3, 3, 3, 3] and collator.skipped == EXPECTED_SKIPS


def test_a_first_batch_of_only_bad_samples_raises(tmp_path, processor):
    rows = [{"image": f"images/gone{i}.png", "caption": "x"} for i in range(2)]
    dataset = build_eval_dataset(CLIPDataArguments(eval_data=str(write_csv(tmp_path / "bad.csv", rows))), processor)
    with pytest.raises(ValueError, match="no good example has been seen yet"):
        CLIPCollator()(list(dataset))


def test_a_small_reserve_repeats_good_samples_of_the_batch(processor, tmp_path):
    path, _ = bad_csv(tmp_path)
    dataset = build_eval_dataset(CLIPDataArguments(eval_data=str(path)), processor)
    collator = CLIPCollator(reserve_size=0)
    batch = collator(list(dataset)[2:8])  # 2 good, then 4 bad
    assert len(batch["input_ids"]) == 6 and collator.replaced == 4
    assert {tuple(ids) for ids in batch["input_ids"].tolist()} == {
        tuple(ids) for ids in batch["input_ids"][:2].tolist()
    }


# ---------------------------------------------------------------------------------------------------------------------
# Streaming, truncation, training
# ---------------------------------------------------------------------------------------------------------------------


def test_streaming_yields_the_same_samples(tmp_path, processor):
    rows = captioned_folder(tmp_path, 5)
    path = str(write_csv(tmp_path / "pairs.csv", rows))
    webdataset_shards(tmp_path / "shards")
    for data in (path, str(tmp_path / "shards")):
        eager = list(build_eval_dataset(CLIPDataArguments(eval_data=data), processor))
        streamed = build_eval_dataset(CLIPDataArguments(eval_data=data, streaming=True), processor)
        assert isinstance(streamed, datasets.IterableDataset)
        streamed = list(streamed)
        assert len(streamed) == len(eager)
        for a, b in zip(eager, streamed):
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    # Training streams are shuffled through a buffer: the same samples, in another order.
    train = build_train_dataset(CLIPDataArguments(train_data=path, streaming=True), processor)
    assert sorted(tuple(e["input_ids"].tolist()) for e in train) == sorted(
        map(tuple, ids_of(processor, [r["caption"] for r in rows]).tolist())
    )


def test_max_train_samples(tmp_path, processor):
    path = str(write_csv(tmp_path / "pairs.csv", captioned_folder(tmp_path, 5)))
    assert len(build_train_dataset(CLIPDataArguments(train_data=path, max_train_samples=3), processor)) == 3
    streamed = build_train_dataset(CLIPDataArguments(train_data=path, max_train_samples=2, streaming=True), processor)
    assert len(list(streamed)) == 2


def test_a_csv_with_bad_rows_trains_and_logs_the_skipped_count(tmp_path, processor):
    from hfmm import HfmmCLIPModel
    from hfmm.training.clip.arguments import CLIPTrainingArguments
    from hfmm.training.clip.trainer import CLIPTrainer

    path, _ = bad_csv(tmp_path)
    args = CLIPTrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = CLIPTrainer(
        model=HfmmCLIPModel(tiny_clip_config()),
        args=args,
        train_dataset=build_train_dataset(CLIPDataArguments(train_data=str(path)), processor),
        data_collator=CLIPCollator(),
    )
    trainer.train()
    logged = [entry["skipped_samples"] for entry in trainer.state.log_history if "skipped_samples" in entry]
    assert len(logged) == 3 and logged[-1] == sum(EXPECTED_SKIPS.values())
