"""NeVA modeling: parity with transformers' Llava and with a hand-built reference, loss, generation, presets, loading."""

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from neva_fixtures import save_tiny_neva, tiny_neva, tiny_neva_config, tiny_tokenizer
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from hfmm import NevaConfig, NevaForConditionalGeneration, NevaModel
from hfmm.models.neva import available_presets


def prompt_ids(config, n_images=1, start_end=False) -> torch.Tensor:
    image = [config.image_token_id] * config.image_seq_length
    if start_end:
        image = [config.im_start_token_id, *image, config.im_end_token_id]
    ids = [1, 17, 23]
    for _ in range(n_images):
        ids += [*image, 40, 41]
    return torch.tensor([ids + [50, 60, 70]])


def pixels(n=1, seed=0) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def reference_logits(model: NevaForConditionalGeneration, ids: torch.Tensor, pixel_values: torch.Tensor):
    """NeVA's semantics spelled out with transformers' own CLIPVisionModel and LlamaForCausalLM."""
    config = model.config
    vision = CLIPVisionModel(config.vision_config).eval()
    vision.load_state_dict(
        {k[len("model.vision_tower.") :]: v for k, v in model.state_dict().items() if "vision_tower" in k}
    )
    llama = LlamaForCausalLM(config.text_config).eval()
    state = {k.replace("model.language_model.", "model."): v for k, v in model.state_dict().items()}
    llama.load_state_dict({k: v for k, v in state.items() if k.startswith(("model.", "lm_head"))}, strict=False)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        features = vision(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        features = projector.linear_1(features)
        if config.projector_type == "mlp2x_gelu":
            features = projector.linear_2(torch.nn.functional.gelu(features))
        embeds = llama.get_input_embeddings()(ids).clone()
        positions = (ids[0] == config.image_token_id).nonzero().flatten()
        embeds[0, positions] = features.reshape(-1, features.shape[-1])
        return llama(inputs_embeds=embeds).logits


def test_logits_and_greedy_tokens_equal_transformers_llava():
    model, _ = tiny_neva(projector_type="mlp2x_gelu")
    config = model.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    llava.load_state_dict(model.state_dict(), strict=True)
    ids, image = prompt_ids(config), pixels()
    with torch.no_grad():
        ours, theirs = model(input_ids=ids, pixel_values=image).logits, llava(input_ids=ids, pixel_values=image).logits
    assert (ours - theirs).abs().max() <= 1e-5
    greedy = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert torch.equal(
        model.generate(input_ids=ids, pixel_values=image, **greedy),
        llava.generate(input_ids=ids, pixel_values=image, **greedy),
    )


@pytest.mark.parametrize("projector_type", ["linear", "mlp2x_gelu"])
def test_logits_equal_the_spelled_out_reference(projector_type):
    model, _ = tiny_neva(projector_type=projector_type)
    ids = prompt_ids(model.config, n_images=2)
    image = pixels(2)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=image).logits
    assert (ours - reference_logits(model, ids, image)).abs().max() <= 1e-5


def test_start_end_tokens_keep_their_embeddings():
    model, _ = tiny_neva(use_im_start_end=True, projector_type="linear")
    config = model.config
    ids, image = prompt_ids(config, start_end=True), pixels()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=image).logits
    assert (ours - reference_logits(model, ids, image)).abs().max() <= 1e-5
    # the start/end tokens' own embeddings matter: changing them changes the output
    with torch.no_grad():
        model.get_input_embeddings().weight[config.im_start_token_id] += 1.0
        changed = model(input_ids=ids, pixel_values=image).logits
    assert (changed - ours).abs().max() > 1e-3


def test_labels_give_the_shifted_lm_loss_ignoring_minus_100():
    model, _ = tiny_neva()
    ids, image = prompt_ids(model.config), pixels()
    labels = ids.masked_fill(ids == model.config.image_token_id, -100)
    output = model(input_ids=ids, pixel_values=image, labels=labels)
    expected = torch.nn.functional.cross_entropy(output.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert abs(output.loss.item() - expected.item()) <= 1e-6
    output.loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_freeze_helpers_and_activation_checkpointing_give_the_same_gradients():
    model, _ = tiny_neva()
    model.freeze_vision_tower()
    ids, image = prompt_ids(model.config), pixels()
    labels = ids.masked_fill(ids == model.config.image_token_id, -100)
    model.train()
    model(input_ids=ids, pixel_values=image, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert not any("vision_tower" in name for name in plain) and any("language_model" in name for name in plain)
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable()
    model(input_ids=ids, pixel_values=image, labels=labels).loss.backward()
    checkpointed = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert plain.keys() == checkpointed.keys()
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) <= 1e-6
    model.freeze_language_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("multi_modal_projector" in name for name in trainable)


def test_kv_cache_generation_equals_full_recomputation():
    model, _ = tiny_neva()
    ids, image = prompt_ids(model.config), pixels()
    with warnings.catch_warnings(record=True) as caught:  # the cache reaches the LM under the installed name
        warnings.simplefilter("always")
        cached = model.generate(input_ids=ids, pixel_values=image, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    sequence = ids
    with torch.no_grad():
        for _ in range(8):
            next_id = model(input_ids=sequence, pixel_values=image).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_id], dim=1)
    assert torch.equal(cached, sequence)


def count_parameters(image_size: int, hidden: int, ffn: int, layers: int, vocab: int, projector: str) -> int:
    """CLIP ViT-L/14 + projector + LLaMA-2 (MHA, untied head), counted from the architecture."""
    width, patches = 1024, (image_size // 14) ** 2
    vit_layer = 4 * (width * width + width) + 2 * width * 4096 + 4096 + width + 4 * width
    vision = 3 * 14 * 14 * width + width + (patches + 1) * width + 2 * width + 24 * vit_layer + 2 * width
    projection = width * hidden + hidden + (hidden * hidden + hidden if projector == "mlp2x_gelu" else 0)
    llama = 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden) + hidden
    return vision + projection + llama


def test_presets_have_the_published_shapes():
    assert available_presets() == ["llama2-13b-chat-vitl14", "llama2-7b-chat-vitl14", "llava-1.5-13b", "llava-1.5-7b"]
    expected = {
        "llava-1.5-7b": (count_parameters(336, 4096, 11008, 32, 32064, "mlp2x_gelu"), 576),
        "llava-1.5-13b": (count_parameters(336, 5120, 13824, 40, 32064, "mlp2x_gelu"), 576),
        "llama2-7b-chat-vitl14": (count_parameters(224, 4096, 11008, 32, 32008, "linear"), 256),
        "llama2-13b-chat-vitl14": (count_parameters(224, 5120, 13824, 40, 32008, "linear"), 256),
    }
    assert expected["llava-1.5-7b"][0] == 7_063_427_072  # llava-hf/llava-1.5-7b-hf, as published
    for name, (count, tokens) in expected.items():
        config = NevaConfig.from_preset(name)
        with torch.device("meta"):
            model = NevaForConditionalGeneration(config)
        assert config.image_seq_length == tokens
        assert sum(p.numel() for p in model.parameters()) == count, name


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="projector_type"):
        tiny_neva_config(projector_type="mlp3x_gelu")
    with pytest.raises(ValueError, match="image_seq_length"):
        tiny_neva_config(image_seq_length=5)
    with pytest.raises(ValueError, match="im_start_token_id"):
        NevaConfig(use_im_start_end=True)
    with pytest.raises(ValueError, match="Unknown NeVA preset"):
        NevaConfig.from_preset("llava-9b")


def test_wrong_number_of_image_tokens_and_too_long_prompts_are_value_errors():
    model, _ = tiny_neva()
    ids = prompt_ids(model.config)
    with pytest.raises(ValueError, match="image tokens but the images give"):
        model(input_ids=ids, pixel_values=pixels(2))
    too_long = torch.ones(1, model.config.text_config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="context is 512"):
        model(input_ids=too_long)
    # generation that runs past the context: the check counts the cached tokens too
    long_prompt = torch.cat([ids, torch.full((1, 512 - ids.shape[1] - 2), 5, dtype=torch.long)], dim=1)
    with pytest.raises(ValueError, match="The sequence has 513 tokens"):
        model.generate(
            input_ids=long_prompt, pixel_values=pixels(), max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
    cache = model(input_ids=ids, pixel_values=pixels(), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="cache once"):
        model(input_ids=ids[:, -1:], cache=cache, past_key_values=cache)


def test_auto_classes_and_save_load_round_trip(tmp_path):
    folder = save_tiny_neva(tmp_path / "neva")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "neva"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_neva.NevaForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_neva.NevaModel"
    model, _ = tiny_neva()
    loaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(loaded, NevaForConditionalGeneration) and isinstance(
        AutoModel.from_pretrained(folder), NevaModel
    )
    ids, image = prompt_ids(model.config), pixels()
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, pixel_values=image).logits, model(input_ids=ids, pixel_values=image).logits
        )


def test_remote_code_load_without_hfmm(tmp_path):
    folder = save_tiny_neva(tmp_path / "neva")
    model, _ = tiny_neva()
    ids, image = prompt_ids(model.config), pixels()
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=image).logits[0, -1]
    torch.save({"ids": ids, "image": image}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hfmm"] = None  # hfmm is installed here; make sure nothing can import it
        import json, torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "NevaProcessor", type(processor)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(input_ids=inputs["ids"], pixel_values=inputs["image"]).logits[0, -1]
        print(json.dumps(logits.tolist()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    assert (remote - expected).abs().max() <= 1e-5


def test_flash_attention_without_flash_attn_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here; the error path is for machines without it")
    except ImportError:
        pass
    folder = save_tiny_neva(tmp_path / "neva")
    with pytest.raises((ImportError, ValueError), match="(?i)flash"):
        NevaForConditionalGeneration.from_pretrained(folder, attn_implementation="flash_attention_2")


def test_image_token_outside_the_vocabulary_still_works():
    """Some checkpoints put the image token past the embedding table; its embedding is never used."""
    tokenizer = tiny_tokenizer()
    config = tiny_neva_config(tokenizer, image_token_id=len(tokenizer))
    torch.manual_seed(0)
    model = NevaForConditionalGeneration(config).eval()
    ids, image = prompt_ids(config), pixels()
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=image).logits
    assert torch.isfinite(logits).all()
