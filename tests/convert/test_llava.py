"""convert/llava_to_hfmm.py: transformers Llava folders (three key layouts), original LLaVA folders, stage-1 folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from neva_fixtures import tiny_image_processor, tiny_neva_config, tiny_tokenizer
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from hfmm import NevaForConditionalGeneration
from hfmm.conversion.checkpoints import CheckpointError
from hfmm.conversion.llava import convert_llava_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "convert" / "llava_to_hfmm.py"


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
    llava.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_image_processor().save_pretrained(folder)
    if layout != "saved":  # rewrite the tensors in another layout transformers has used
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


@pytest.mark.parametrize("layout", ["saved", "in-memory", "legacy"])
def test_transformers_llava_converts_exactly(tmp_path, layout):
    llava = save_llava_folder(tmp_path / "llava", layout)
    result = convert_llava_checkpoint(tmp_path / "llava", tmp_path / "neva")
    assert result.max_logit_difference is not None and result.max_logit_difference <= 1e-5
    neva = AutoModelForImageTextToText.from_pretrained(tmp_path / "neva")
    assert isinstance(neva, NevaForConditionalGeneration)
    ids, image = prompt(neva.config.image_token_id), pixels()
    with torch.no_grad():
        ours, theirs = neva(input_ids=ids, pixel_values=image).logits, llava(input_ids=ids, pixel_values=image).logits
    assert (ours - theirs).abs().max() <= 1e-5
    greedy = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(
        neva.generate(input_ids=ids, pixel_values=image, **greedy),
        llava.generate(input_ids=ids, pixel_values=image, **greedy),
    )


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


def original_folder(folder: Path, llava: LlavaForConditionalGeneration, tokenizer, projector: str = "mlp2x_gelu"):
    """An original haotian-liu LLaVA folder: `LlavaLlamaForCausalLM` keys, a `llava_llama` config, no `<image>`."""
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
    save_file(tensors, folder / "model.safetensors")
    text = llava.config.text_config.to_dict()
    config = {**text, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
              "mm_projector_type": projector, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "mm_use_im_start_end": False, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
              "image_aspect_ratio": "pad"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    return tensors


def clip_vision_folder(folder: Path, llava: LlavaForConditionalGeneration) -> Path:
    vision = CLIPVisionModel(llava.config.vision_config)
    vision.load_state_dict(
        {k[len("model.vision_tower.") :]: v for k, v in llava.state_dict().items() if "vision_tower" in k}
    )
    vision.save_pretrained(folder)
    tiny_image_processor().save_pretrained(folder)
    return folder


def test_original_llava_folder_matches_transformers_llava_through_its_key_mapping(tmp_path):
    """Ground truth: transformers' own Llava reading the original folder with the key_mapping of research §3.6.

    LLaVA has no `<image>` token (it splices images in at id -200), so the converter adds one and resizes the
    embeddings; those new rows are the conversion's choice, so the reference gets the same rows. Everything else
    (every original weight and the whole forward) is compared: logits within 1e-5, 20 greedy tokens equal.
    """
    tokenizer = tiny_tokenizer(image_token=False)
    text_vocab = len(tokenizer)
    llava = tiny_llava(tokenizer)
    original_folder(tmp_path / "original", llava, tokenizer)
    vision = clip_vision_folder(tmp_path / "clip", llava)
    result = convert_llava_checkpoint(tmp_path / "original", tmp_path / "neva", vision=vision)
    assert result.max_logit_difference is not None and result.max_logit_difference <= 1e-5
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva").eval()
    assert neva.config.text_config.vocab_size % 64 == 0 and neva.config.text_config.vocab_size > text_vocab
    assert neva.config.image_token_id == text_vocab  # the added <image>
    embeddings = neva.get_input_embeddings().weight
    assert torch.equal(embeddings[:text_vocab], llava.get_input_embeddings().weight)  # original rows untouched
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "neva")
    assert processor.image_token_id == text_vocab and type(processor.image_processor).__name__.startswith("LlavaImage")


def test_stage1_projector_folder_needs_and_uses_llm_and_vision(tmp_path):
    tokenizer = tiny_tokenizer(image_token=False)
    llava = tiny_llava(tokenizer)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    projector = {k.replace("model.multi_modal_projector.linear_1", "model.mm_projector.0").replace(
        "model.multi_modal_projector.linear_2", "model.mm_projector.2"): v for k, v in llava.state_dict().items()
        if "multi_modal_projector" in k}  # fmt: skip
    torch.save(projector, stage1 / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="holds only the projector.*--llm"):
        convert_llava_checkpoint(stage1, tmp_path / "neva")
    assert not (tmp_path / "neva").exists()
    llm = LlamaForCausalLM(llava.config.text_config)
    llm.load_state_dict({k.replace("model.language_model.", "model."): v for k, v in llava.state_dict().items()
                         if "language_model" in k or k == "lm_head.weight"})  # fmt: skip
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    with pytest.raises(CheckpointError, match="--vision"):
        convert_llava_checkpoint(stage1, tmp_path / "neva", llm=tmp_path / "llm")
    vision = clip_vision_folder(tmp_path / "clip", llava)
    convert_llava_checkpoint(stage1, tmp_path / "neva", llm=tmp_path / "llm", vision=vision)
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva")
    ours = neva.state_dict()
    for key, value in llava.state_dict().items():
        if key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[key][: value.shape[0]], value)  # resized for <image>
        else:
            assert torch.equal(ours[key], value), key


def test_broken_inputs_give_one_line_errors_and_no_destination(tmp_path):
    save_llava_folder(tmp_path / "llava", "saved")
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
