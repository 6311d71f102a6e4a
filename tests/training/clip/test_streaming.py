"""Streaming webdataset shards for training: every sample once per data epoch across 2 ranks x 2 workers,
deterministic for a seed, resampled mode, too few shards, and resuming a killed run through the Trainer."""

import io
import itertools
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import datasets
import pytest
from datasets.distributed import split_dataset_by_node
from PIL import Image
from transformers import TrainingArguments

from hfmm.training.clip.arguments import CLIPDataArguments
from hfmm.training.clip.data import ShardStream, build_train_dataset, configure_streaming, expand_shards, stream_shards

WORKER = Path(__file__).with_name("stream_worker.py")
SHARDS, PER_SHARD, BATCH = 8, 6, 4  # 2 ranks x 2 workers: 2 shards = 12 samples = 3 batches per reader per epoch
STEPS_PER_EPOCH = SHARDS * PER_SHARD // (2 * BATCH)  # 6 steps per rank


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def write_shards(folder: Path, shards: int = SHARDS, per_shard: int = PER_SHARD) -> list[str]:
    """Real tar shards of 30 px JPEGs and captions, `{key}.jpg` + `{key}.txt`; returns every key."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard in range(shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"s{shard:02d}_{i:02d}"
                buffer = io.BytesIO()
                Image.new("RGB", (30, 30), (30 * shard % 256, 40 * i % 256, 90)).save(buffer, format="JPEG")
                for name, payload in (
                    (f"{key}.jpg", buffer.getvalue()),
                    (f"{key}.txt", f"shard {shard} {i}".encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                keys.append(key)
    return keys


def run_worker(out: Path, shards: Path, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*launcher, str(WORKER), str(out), str(shards), "--batch", str(BATCH), "--workers", "2", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_DATASETS_CACHE": str(out / "hf_cache")},
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def steps_of(out: Path) -> dict[int, dict[int, list[str]]]:
    """{rank: {step: keys}} as recorded by the worker (a later line for the same step overwrites an earlier one)."""
    ranks = {}
    for rank in (0, 1):
        lines = (out / f"keys-rank{rank}.jsonl").read_text().splitlines()
        ranks[rank] = {entry["step"]: entry["keys"] for entry in map(json.loads, lines)}
    return ranks


def epoch_keys(ranks: dict, epoch: int) -> list[str]:
    steps = range(epoch * STEPS_PER_EPOCH + 1, (epoch + 1) * STEPS_PER_EPOCH + 1)
    return [key for rank in ranks.values() for step in steps for key in rank[step]]


def test_two_ranks_two_workers_see_every_sample_once_per_epoch_then_resume_exactly(tmp_path):
    keys = write_shards(tmp_path / "shards")
    straight = tmp_path / "straight"
    run_worker(straight, tmp_path / "shards", "--steps", str(2 * STEPS_PER_EPOCH))
    ranks = steps_of(straight)
    assert all(sorted(rank) == list(range(1, 2 * STEPS_PER_EPOCH + 1)) for rank in ranks.values())
    assert all(len(batch) == BATCH for rank in ranks.values() for batch in rank.values())
    for epoch in (0, 1):
        assert sorted(epoch_keys(ranks, epoch)) == sorted(keys)  # each key exactly once, across both ranks
    assert epoch_keys(ranks, 0) != epoch_keys(ranks, 1)  # reshuffled per epoch
    first_shards = [{key[:3] for step in (1, 3, 5) for key in rank[step]} for rank in ranks.values()]
    assert first_shards[0].isdisjoint(first_shards[1])  # each rank reads its own shards

    # Killed in epoch 1 (after checkpoint-8 is saved, before step 10 trains), resumed by the Trainer from checkpoint-8.
    crashed = tmp_path / "crashed"
    result = run_worker(crashed, tmp_path / "shards", "--steps", "12", "--save-steps", "4", "--crash-after", "9",
                        check=False)  # fmt: skip
    assert result.returncode != 0 and (crashed / "run" / "checkpoint-8").is_dir()
    before = steps_of(crashed)
    assert before == {rank: {s: ranks[rank][s] for s in range(1, 10)} for rank in ranks}  # deterministic for a seed
    resumed = tmp_path / "resumed"
    run_worker(resumed, tmp_path / "shards", "--steps", "12", "--resume", str(crashed / "run" / "checkpoint-8"))
    after = steps_of(resumed)
    assert all(sorted(rank) == [9, 10, 11, 12] for rank in after.values())
    joined = {rank: {**{s: k for s, k in before[rank].items() if s <= 8}, **after[rank]} for rank in ranks}
    for epoch in (0, 1):
        assert sorted(epoch_keys(joined, epoch)) == sorted(keys)  # no repeat, no skip
    assert joined == ranks


def test_resampled_mode_runs_train_num_samples_worth_of_steps(tmp_path):
    keys = write_shards(tmp_path / "shards")
    out = tmp_path / "resampled"
    run_worker(out, tmp_path / "shards", "--resampled", "--train-num-samples", "96")
    ranks = steps_of(out)
    steps = 96 // (BATCH * 2)  # max_steps = num_train_epochs (1) * train_num_samples // global batch
    assert all(sorted(rank) == list(range(1, steps + 1)) for rank in ranks.values())
    drawn = [key for rank in ranks.values() for batch in rank.values() for key in batch]
    assert len(drawn) == 96 and set(drawn) <= set(keys)
    assert {key[:3] for key in drawn} == {key[:3] for key in keys}  # drawn from every shard
    assert max(Counter(drawn).values()) > 1  # with replacement


def test_fewer_shards_than_ranks_times_workers_is_a_clear_error(tmp_path):
    write_shards(tmp_path / "shards", shards=3)
    result = run_worker(tmp_path / "out", tmp_path / "shards", "--steps", "2", check=False)
    assert result.returncode != 0
    assert "3 webdataset shards cannot feed 4 readers" in result.stderr
    assert "streaming needs at least 4 shards" in result.stderr


# ---------------------------------------------------------------------------------------------------------------------
# One process: the stream itself, and the arguments it needs
# ---------------------------------------------------------------------------------------------------------------------


def first_keys(shards: list[str], seed: int, n: int, resampled: bool = False) -> list[str]:
    stream = ShardStream(tuple(shards), seed=seed, resampled=resampled)
    return [row["__key__"] for row in itertools.islice(stream(0), n)]


def test_the_stream_is_a_seeded_permutation_per_epoch(tmp_path):
    keys = write_shards(tmp_path / "shards")
    shards = expand_shards(str(tmp_path / "shards"))
    total = len(keys)
    seed0 = first_keys(shards, 0, 3 * total)
    assert seed0 == first_keys(shards, 0, 3 * total)
    for epoch in range(3):
        assert sorted(seed0[epoch * total : (epoch + 1) * total]) == sorted(keys)
    assert seed0[:total] != seed0[total : 2 * total]
    assert first_keys(shards, 1, total) != seed0[:total]
    assert first_keys(shards, 0, total, resampled=True) == first_keys(shards, 0, total, resampled=True)


def test_streamed_training_examples_carry_their_key(tmp_path):
    from conftest import tiny_clip_config

    from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

    keys = write_shards(tmp_path / "shards")
    processor = HfmmCLIPProcessor.from_vision_config(tiny_clip_config().vision_config)
    args = CLIPDataArguments(train_data=str(tmp_path / "shards"), streaming=True, max_train_samples=len(keys))
    examples = list(build_train_dataset(args, processor, seed=0))
    assert sorted(e["__key__"] for e in examples) == sorted(keys)
    assert examples[0]["pixel_values"].shape == (3, 30, 30) and examples[0]["skip_reason"] is None


def test_configure_streaming_sets_dispatch_and_max_steps(tmp_path):
    write_shards(tmp_path / "shards", shards=1, per_shard=1)
    data = CLIPDataArguments(train_data=str(tmp_path / "shards"), streaming=True, train_num_samples=1000)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8, num_train_epochs=3)
    configure_streaming(args, data)
    assert args.accelerator_config.dispatch_batches is False and args.max_steps == 3 * 1000 // 8
    with pytest.raises(ValueError, match="needs max_steps or train_num_samples"):
        configure_streaming(TrainingArguments(output_dir=str(tmp_path), use_cpu=True), CLIPDataArguments(
            train_data=str(tmp_path / "shards"), streaming=True))  # fmt: skip
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\na.png,a\n")
    with pytest.raises(ValueError, match="dataset_resampled=True needs webdataset shards with streaming=True"):
        build_train_dataset(CLIPDataArguments(train_data=str(csv), dataset_resampled=True), processor=None)


def test_an_odd_shard_count_is_split_between_ranks_without_loss(tmp_path, monkeypatch):
    """9 shards over 2 ranks, split by `datasets` as accelerate does (`split_dataset_by_node`): rank 0 reads 5 shards
    and rank 1 reads 4 in an epoch, together every sample once. (With a slot count not divisible by the world size,
    `datasets` would make each rank keep every other sample of its own shards and lose the rest.)"""
    keys = write_shards(tmp_path / "shards", shards=9, per_shard=4)
    seen = []
    for rank, shards in ((0, 5), (1, 4)):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream, _ = stream_shards(str(tmp_path / "shards"), CLIPDataArguments(streaming=True), seed=0)
        rows = split_dataset_by_node(stream, rank=rank, world_size=2)
        seen += [row["__key__"] for row in itertools.islice(iter(rows), shards * 4)]
    assert sorted(seen) == sorted(keys)
