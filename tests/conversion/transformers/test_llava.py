"""convert/llava_to_hfmm.py: transformers Llava folders (three key layouts), original LLaVA folders, stage-1 folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from neva_fixtures import save_tiny_neva, tiny_image_processor, tiny_neva_config, tiny_tokenizer
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from hfmm import NevaForConditionalGeneration
from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.transformers.llava import convert_llava_checkpoint
from hfmm.models.neva.processing_neva import NevaProcessor

SCRIPT = Path(__file__).resolve().parents[3] / "convert" / "llava_to_hfmm.py"


def tiny_llava(tokenizer, seed=0) -> LlavaForConditionalGeneration:
    neva = tiny_neva_config(tokenizer)
    config = LlavaConfig(
        vision_config=neva.vision_config.to_dict(),
        text_config=neva.text_config.to_dict(),
        image_token_index=neva.image_token_id,
        image_seq_length=neva.image_seq_length,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


def prompt(image_token_id: int, tokens: int = 4) -> torch.Tensor:
    return torch.tensor([[1, 30, 31, *[image_token_id] * tokens, 40, 41, 42]])


def pixels() -> torch.Tensor:
    return torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def save_llava_folder(folder: Path, layout: str) -> LlavaForConditionalGeneration:
    tokenizer = tiny_tokenizer()
    llava = tiny_llava(tokenizer)
    llava.save_pretrained(folder, max_shard_size="50KB" if layout == "sharded" else "5GB")
    tokenizer.save_pretrained(folder)
    tiny_image_processor().save_pretrained(folder)
    if layout not in ("saved", "sharded"):  # rewrite the tensors in another layout transformers has used
        tensors = {}
        for key, value in llava.state_dict().items():
            if layout == "in-memory":
                tensors[key] = value.contiguous()
            else:  # pre-4.52 llava-hf repos
                key = key.replace("model.vision_tower.", "vision_tower.vision_model.")
                key = key.replace("model.multi_modal_projector.", "multi_modal_projector.")
                key = key.replace("model.language_model.", "language_model.model.")
                tensors[key.replace("lm_head.", "language_model.lm_head.")] = value.contiguous()
        save_file(tensors, folder / "model.safetensors")
    return llava


def assert_matches_llava(neva, llava) -> None:
    """Logits within 1e-5 and 20 equal greedy tokens on the same prompt and image."""
    ids, image = prompt(neva.config.image_token_id), pixels()
    with torch.no_grad():
        ours, theirs = neva(input_ids=ids, pixel_values=image).logits, llava(input_ids=ids, pixel_values=image).logits
    assert (ours - theirs).abs().max() <= 1e-5
    greedy = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(
        neva.generate(input_ids=ids, pixel_values=image, **greedy),
        llava.generate(input_ids=ids, pixel_values=image, **greedy),
    )


@pytest.mark.parametrize("layout", ["saved", "sharded", "in-memory", "legacy"])
def test_transformers_llava_converts_exactly(tmp_path, layout):
    llava = save_llava_folder(tmp_path / "llava", layout)
    assert (layout == "sharded") == (tmp_path / "llava" / "model.safetensors.index.json").is_file()
    shard = "50KB" if layout == "sharded" else "5GB"
    result = convert_llava_checkpoint(tmp_path / "llava", tmp_path / "neva", max_shard_size=shard)
    assert result.differences is not None and result.differences["logits"] <= 1e-5
    assert (layout == "sharded") == (tmp_path / "neva" / "model.safetensors.index.json").is_file()
    neva = AutoModelForImageTextToText.from_pretrained(tmp_path / "neva")
    assert isinstance(neva, NevaForConditionalGeneration)
    assert_matches_llava(neva, llava)


def test_the_script_and_the_reverse_export_to_a_native_llava(tmp_path):
    llava = save_llava_folder(tmp_path / "llava", "saved")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "llava"), str(tmp_path / "neva")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "verified against transformers' Llava" in run.stdout
    export = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("to_transformers.py")), str(tmp_path / "neva"), str(tmp_path / "back")],
        capture_output=True,
        text=True,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "llava"
    native = LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    ids, image = prompt(llava.config.image_token_id), pixels()
    with torch.no_grad():
        assert (
            native(input_ids=ids, pixel_values=image).logits - llava(input_ids=ids, pixel_values=image).logits
        ).abs().max() <= 1e-5
    greedy = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(
        native.generate(input_ids=ids, pixel_values=image, **greedy),
        llava.generate(input_ids=ids, pixel_values=image, **greedy),
    )
    # transformers' own LlavaProcessor reads the export and prepares what hfmm's processor prepares
    native_processor, neva_processor = (
        AutoProcessor.from_pretrained(tmp_path / "back"),
        NevaProcessor.from_pretrained(tmp_path / "neva"),
    )
    assert type(native_processor).__name__ == "LlavaProcessor"
    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    text = "USER: <image>\nWhat colour is the square? ASSISTANT:"
    ours = neva_processor(images=picture, text=text, return_tensors="pt")
    theirs = native_processor(images=picture, text=text, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-6)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    assert native_processor.apply_chat_template(messages) == neva_processor.apply_chat_template(messages)


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"projector_type": "linear"}, "a linear projector"),
        ({"use_im_start_end": True}, "image start/end tokens"),
    ],
)
def test_export_refuses_what_llava_cannot_represent(tmp_path, overrides, reason):
    save_tiny_neva(tmp_path / "neva", **overrides)
    run = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("to_transformers.py")), str(tmp_path / "neva"), str(tmp_path / "back")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and reason in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "back").exists()


def original_folder(
    folder: Path,
    llava: LlavaForConditionalGeneration,
    tokenizer,
    *,
    projector: str = "mlp2x_gelu",
    start_end: bool = False,
    pickles: bool = False,
) -> Path:
    """An original haotian-liu LLaVA folder: `LlavaLlamaForCausalLM` keys, a `llava_llama` config, no `<image>`;
    `pickles` writes two `pytorch_model-*.bin` shards with the `rotary_emb.inv_freq` buffers old LLaVA saved."""
    tensors = {}
    for key, value in llava.state_dict().items():
        key = key.replace("model.multi_modal_projector.linear_1", "model.mm_projector.0")
        key = key.replace("model.multi_modal_projector.linear_2", "model.mm_projector.2")
        key = key.replace("model.vision_tower.", "model.vision_tower.vision_tower.vision_model.")
        key = key.replace("model.language_model.", "model.")
        if projector == "linear":
            if "mm_projector.2" in key:
                continue
            key = key.replace("mm_projector.0", "mm_projector")
        tensors[key] = value.contiguous()
    folder.mkdir()
    if pickles:
        for i in range(llava.config.text_config.num_hidden_layers):
            tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
        keys = sorted(tensors)
        shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
        for name, part in shards.items():
            torch.save({key: tensors[key] for key in part}, folder / name)
        weight_map = {key: name for name, part in shards.items() for key in part}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(tensors, folder / "model.safetensors")
    text = llava.config.text_config.to_dict()
    config = {**text, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
              "mm_projector_type": projector, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "mm_use_im_start_end": start_end, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
              "image_aspect_ratio": "pad"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    return folder


def clip_vision_folder(folder: Path, llava: LlavaForConditionalGeneration, full: bool = False) -> Path:
    """The Llava's tower as a transformers `CLIPVisionModel` folder, or (`full`) inside a whole `CLIPModel` folder, as
    `openai/clip-vit-large-patch14-336` is."""
    tower = {k[len("model.vision_tower.") :]: v for k, v in llava.state_dict().items() if "vision_tower" in k}
    if full:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
        clip = CLIPModel(CLIPConfig(vision_config=llava.config.vision_config.to_dict(), text_config=text))
        clip.vision_model.load_state_dict(tower)
        clip.save_pretrained(folder)
    else:
        vision = CLIPVisionModel(llava.config.vision_config)
        vision.load_state_dict(tower)
        vision.save_pretrained(folder)
    tiny_image_processor().save_pretrained(folder)
    return folder


ORIGINAL_KEY_MAPPING = {  # research/hf_integration.md §3.6, written out here so the ground truth is independent
    r"^model\.mm_projector\.0": "model.multi_modal_projector.linear_1",
    r"^model\.mm_projector\.2": "model.multi_modal_projector.linear_2",
    r"^model\.vision_tower\.vision_tower\.vision_model": "model.vision_tower",
    r"^model\.(embed_tokens|layers|norm)": r"model.language_model.\1",
}


def test_original_llava_folder_matches_transformers_llava_through_its_key_mapping(tmp_path):
    """Ground truth: transformers' own Llava reading the original folder with the key_mapping of research §3.6.

    LLaVA has no `<image>` token (it splices images in at id -200), so the converter adds one and resizes the
    embeddings; the new rows are the conversion's (seeded) choice, not something the source defines. So the fair
    comparisons are (1) on text the source understands: its logits equal ours over the vocabulary both have, with
    the reference's embeddings left as they are; (2) with an image: the reference is given our new rows (the only
    weights it does not have), then logits within 1e-5 and 20 greedy tokens equal. Converting twice gives the same
    rows (the resize is seeded).
    """
    tokenizer = tiny_tokenizer(image_token=False)
    text_vocab = len(tokenizer)
    llava = tiny_llava(tokenizer)
    original_folder(tmp_path / "original", llava, tokenizer)
    vision = clip_vision_folder(tmp_path / "clip", llava)
    result = convert_llava_checkpoint(tmp_path / "original", tmp_path / "neva", vision=vision)
    assert result.differences is not None and result.differences["logits"] <= 1e-5
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva").eval()
    assert neva.config.text_config.vocab_size % 64 == 0 and neva.config.text_config.vocab_size > text_vocab
    assert neva.config.image_token_id == text_vocab  # the added <image>
    embeddings = neva.get_input_embeddings().weight
    assert torch.equal(embeddings[:text_vocab], llava.get_input_embeddings().weight)  # original rows untouched
    new_rows = embeddings[text_vocab:]
    assert (new_rows - embeddings[:text_vocab].mean(0)).abs().max() < 0.1 * embeddings[:text_vocab].std()

    llava_config = LlavaConfig(**{**llava.config.to_dict(), "image_token_index": neva.config.image_token_id})
    reference = LlavaForConditionalGeneration.from_pretrained(
        tmp_path / "original", config=llava_config, key_mapping=ORIGINAL_KEY_MAPPING
    ).eval()
    text_only = torch.tensor([[1, 30, 31, 32, 40, 41, 42]])
    with torch.no_grad():
        ours, theirs = neva(input_ids=text_only).logits, reference(input_ids=text_only).logits
    assert (ours[..., :text_vocab] - theirs).abs().max() <= 1e-5

    reference.resize_token_embeddings(neva.config.text_config.vocab_size, mean_resizing=False)
    with torch.no_grad():
        reference.get_input_embeddings().weight.copy_(embeddings)
        reference.lm_head.weight.copy_(neva.lm_head.weight)
    ids, image = prompt(neva.config.image_token_id), pixels()
    with torch.no_grad():
        ours, theirs = (
            neva(input_ids=ids, pixel_values=image).logits,
            reference(input_ids=ids, pixel_values=image).logits,
        )
    assert (ours - theirs).abs().max() <= 1e-5
    greedy = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(
        neva.generate(input_ids=ids, pixel_values=image, **greedy),
        reference.generate(input_ids=ids, pixel_values=image, **greedy),
    )

    processor = AutoProcessor.from_pretrained(tmp_path / "neva")
    assert processor.image_token_id == text_vocab and type(processor.image_processor).__name__.startswith("LlavaImage")
    assert "<im_start>" in processor.tokenizer.all_special_tokens  # the source's special tokens are kept
    convert_llava_checkpoint(tmp_path / "original", tmp_path / "again", vision=vision)
    assert torch.equal(load_file(tmp_path / "again" / "model.safetensors")["lm_head.weight"], neva.lm_head.weight)


def test_original_linear_projector_with_start_end_tokens_in_pickle_shards(tmp_path):
    """A NeMo-era layout Llava cannot hold (linear projector, `<im_start>`/`<im_end>`), in `.bin` shards with
    `inv_freq` buffers. Ground truth: the source modules spelled out (transformers' CLIP tower layer -2 without CLS,
    the source's linear projector, transformers' Llama), compared over the prompt ids and vocabulary both have."""
    tokenizer = tiny_tokenizer(image_token=False)
    text_vocab = len(tokenizer)
    llava = tiny_llava(tokenizer)
    original_folder(tmp_path / "original", llava, tokenizer, projector="linear", start_end=True, pickles=True)
    result = convert_llava_checkpoint(
        tmp_path / "original", tmp_path / "neva", vision=clip_vision_folder(tmp_path / "clip", llava)
    )
    assert result.differences is None and any("not verified" in note for note in result.notes)
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva").eval()
    config = neva.config
    assert config.projector_type == "linear" and config.use_im_start_end
    start, end = tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
    assert (config.im_start_token_id, config.im_end_token_id) == (start, end)

    n = config.image_seq_length
    ids = torch.tensor([[1, 30, start, *[config.image_token_id] * n, end, 40, 41]])
    image = pixels()
    source = llava.model
    with torch.no_grad():
        features = source.vision_tower(image, output_hidden_states=True).hidden_states[-2][:, 1:]  # (1, n, 32)
        features = source.multi_modal_projector.linear_1(features)  # the linear projector: mm_projector
        embeds = source.language_model.embed_tokens(ids.masked_fill(ids == config.image_token_id, 0)).clone()
        embeds[0, 3 : 3 + n] = features[0]
        theirs = llava.lm_head(source.language_model(inputs_embeds=embeds).last_hidden_state)
        ours = neva(input_ids=ids, pixel_values=image).logits
    assert (ours[..., :text_vocab] - theirs).abs().max() <= 1e-5

    processor = AutoProcessor.from_pretrained(tmp_path / "neva")
    expanded = processor(images=Image.new("RGB", (28, 28)), text="USER: <image>\nhi")["input_ids"][0].tolist()
    first = expanded.index(start)
    assert expanded[first : first + n + 2] == [start, *[config.image_token_id] * n, end]


@pytest.mark.parametrize("full_clip", [False, True])
def test_stage1_projector_folder_needs_and_uses_llm_and_vision(tmp_path, full_clip):
    tokenizer = tiny_tokenizer(image_token=False)
    llava = tiny_llava(tokenizer)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    projector = {k.replace("model.multi_modal_projector.linear_1", "model.mm_projector.0").replace(
        "model.multi_modal_projector.linear_2", "model.mm_projector.2"): v for k, v in llava.state_dict().items()
        if "multi_modal_projector" in k}  # fmt: skip
    torch.save(projector, stage1 / "mm_projector.bin")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(stage1), str(tmp_path / "neva")], capture_output=True, text=True
    )
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
    assert "holds only the projector" in run.stderr and "--llm" in run.stderr
    assert not (tmp_path / "neva").exists()
    llm = LlamaForCausalLM(llava.config.text_config)
    llm.load_state_dict({k.replace("model.language_model.", "model."): v for k, v in llava.state_dict().items()
                         if "language_model" in k or k == "lm_head.weight"})  # fmt: skip
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    with pytest.raises(CheckpointError, match="--vision"):
        convert_llava_checkpoint(stage1, tmp_path / "neva", llm=tmp_path / "llm")
    vision = clip_vision_folder(tmp_path / "clip", llava, full=full_clip)
    result = convert_llava_checkpoint(stage1, tmp_path / "neva", llm=tmp_path / "llm", vision=vision)
    # verified against transformers' Llava assembled from the three sources by transformers' own loaders
    assert result.differences is not None and result.differences["logits"] <= 1e-5
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva")
    ours = neva.state_dict()
    for key, value in llava.state_dict().items():
        if key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[key][: value.shape[0]], value)  # resized for <image>
        else:
            assert torch.equal(ours[key], value), key


def test_broken_inputs_give_one_line_errors_and_no_destination(tmp_path):
    save_llava_folder(tmp_path / "llava", "saved")
    (tmp_path / "llava" / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="no preprocessor_config.json"):
        convert_llava_checkpoint(tmp_path / "llava", tmp_path / "neva")
    tiny_image_processor().save_pretrained(tmp_path / "llava")
    weights = tmp_path / "llava" / "model.safetensors"
    tensors = load_file(weights)
    tensors.pop("language_model.lm_head.weight")
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="lm_head"):
        convert_llava_checkpoint(tmp_path / "llava", tmp_path / "neva")
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "llava"), str(tmp_path / "neva")], capture_output=True, text=True
    )
    assert run.returncode == 1 and run.stderr.startswith("error:") and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "neva").exists()
    with pytest.raises(CheckpointError, match="not a folder"):
        convert_llava_checkpoint(tmp_path / "missing", tmp_path / "neva")


def test_folder_saved_by_the_installed_transformers_with_its_llava_processor(tmp_path):
    """Issue 15 item 4: transformers 5's `LlavaProcessor.save_pretrained` writes one `processor_config.json` (the
    image processor nested) and no `preprocessor_config.json`; the script converts such a folder exactly."""
    from transformers import LlavaProcessor

    tokenizer = tiny_tokenizer()
    llava = tiny_llava(tokenizer)
    llava.save_pretrained(tmp_path / "llava")
    processor = LlavaProcessor(
        image_processor=tiny_image_processor(),
        tokenizer=tokenizer,
        patch_size=14,
        num_additional_image_tokens=1,  # the class token, dropped by the "default" strategy (llava-hf's settings)
        vision_feature_select_strategy="default",
        chat_template=NevaProcessor.chat_template_for("v1"),
    )
    processor.save_pretrained(tmp_path / "llava")
    assert (tmp_path / "llava" / "processor_config.json").is_file()
    assert not (tmp_path / "llava" / "preprocessor_config.json").exists()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "llava"), str(tmp_path / "neva")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva").eval()
    assert_matches_llava(neva, llava)
    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    text = "USER: <image>\nWhat colour is the square? ASSISTANT:"
    converted = NevaProcessor.from_pretrained(tmp_path / "neva")(images=picture, text=text, return_tensors="pt")
    source = processor(images=picture, text=text, return_tensors="pt")
    assert torch.equal(converted["input_ids"], source["input_ids"])
    assert torch.allclose(converted["pixel_values"], source["pixel_values"], atol=1e-6)
