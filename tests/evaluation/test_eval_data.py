"""hfmm.evaluation.data: a dataset's name and split, captioned and labelled image sets, unreadable images."""

import logging

import pytest
from colour_oracle import caption_csv, colour_folder

from hfmm.evaluation import dataset_identity, load_classification_data, load_images, load_retrieval_data, read_rows


def test_dataset_identity_reads_a_split_from_the_path(tmp_path):
    (tmp_path / "colours" / "test").mkdir(parents=True)
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "validation.csv").write_text("image,caption\n")
    (tmp_path / "pets.jsonl").write_text("{}\n")
    assert dataset_identity(tmp_path / "colours" / "test") == ("colours", "test")
    assert dataset_identity(tmp_path / "shapes" / "validation.csv") == ("shapes", "validation")
    assert dataset_identity(tmp_path / "pets.jsonl") == ("pets", "test")


def test_retrieval_data_gives_repeated_images_several_captions(tmp_path):
    path = caption_csv(tmp_path, [("red", "a red one"), ("blue", "blue"), ("red", "crimson")])
    data = load_retrieval_data(path)
    assert data.paths == [tmp_path / "images" / "red.png", tmp_path / "images" / "blue.png"]  # relative to the CSV
    assert data.captions == ["a red one", "blue", "crimson"] and data.caption_images == [0, 1, 0]
    assert (data.name, data.split) == ("captions", "test")


def test_classification_data_from_folders_and_jsonl(tmp_path):
    folder = colour_folder(tmp_path / "test", {"sky_blue": ["blue"], "red": ["red", "red"]})
    data = load_classification_data(folder)
    assert data.classnames == ["red", "sky blue"] and data.labels == [0, 0, 1]  # sorted folders, `_` as a space
    rows = '{"image": "test/red/0.png", "label": 1}\n{"image": "test/sky_blue/0.png", "label": 0}\n'
    (tmp_path / "labels.jsonl").write_text(rows)
    data = load_classification_data(tmp_path / "labels.jsonl", classnames=["sky", "fire"])
    assert data.labels == [1, 0] and data.paths[0] == tmp_path / "test" / "red" / "0.png"
    with pytest.raises(ValueError, match="labels up to 1 but only 1 classnames"):
        load_classification_data(tmp_path / "labels.jsonl", classnames=["sky"])


def test_read_rows_refuses_unknown_formats_and_empty_files(tmp_path):
    (tmp_path / "data.txt").write_text("image,caption\n")
    with pytest.raises(ValueError, match="must be a .csv/.tsv or .jsonl"):
        read_rows(tmp_path / "data.txt")
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(ValueError, match="holds no rows"):
        read_rows(tmp_path / "empty.csv")
    (tmp_path / "rows.tsv").write_text("image\tcaption\na.png\ta cat\n")
    assert read_rows(tmp_path / "rows.tsv", csv_separator="\t") == [{"image": "a.png", "caption": "a cat"}]


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, caplog):
    folder = colour_folder(tmp_path, {"x": ["red", "blue"]})
    (folder / "x" / "broken.png").write_bytes(b"\x89PNG broken")
    paths = [folder / "x" / "0.png", folder / "x" / "broken.png", folder / "x" / "1.png", tmp_path / "missing.png"]
    with caplog.at_level(logging.WARNING, logger="hfmm.evaluation"):
        images, kept = load_images(paths)
    assert kept == [0, 2] and [image.getpixel((0, 0)) for image in images] == [(255, 0, 0), (0, 0, 255)]
    assert sum("Skipping unreadable image" in record.message for record in caplog.records) == 2
