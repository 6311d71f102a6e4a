"""Tiny-config tests of hfmm's CLIP modeling: API, attention kernels, save/load, checkpointing, NeMo extras."""

import pytest
import torch
from conftest import tiny_clip_config
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification
from transformers.modeling_outputs import BaseModelOutputWithPooling

import hfmm
from hfmm import HfmmCLIPConfig, HfmmCLIPModel, HfmmCLIPVisionConfig, HfmmCLIPVisionModel, HfmmSigLIPConfig


def text_inputs(batch=3, length=9):
    ids = torch.randint(1, 49000, (batch, length))
    ids[:, 0] = 49406
    ends = torch.tensor([length - 1, 4, 6][:batch])
    ids[torch.arange(batch), ends] = 49407
    mask = (torch.arange(length)[None] <= ends[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def embeddings(model, pixel_values, ids, mask):
    with torch.no_grad():
        image = model.get_image_features(pixel_values, output_hidden_states=True)
        text = model.get_text_features(ids, attention_mask=mask)
    return image, text


def test_api_and_return_types(tiny_config):
    model = HfmmCLIPModel(tiny_config).eval()
    ids, mask = text_inputs()
    pixels = torch.randn(2, 3, 30, 30)
    image, text = embeddings(model, pixels, ids, mask)
    assert isinstance(image, BaseModelOutputWithPooling) and image.pooler_output.shape == (2, 16)
    assert text.pooler_output.shape == (3, 16)
    assert len(image.hidden_states) == 3 and image.hidden_states[0].shape == (2, 226, 32)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=False)
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    expected = model.logit_scale.exp() * out.image_embeds @ out.text_embeds.t()
    torch.testing.assert_close(out.logits_per_image, expected)
    assert model.logit_scale.shape == (1,) and model.logit_bias is None


def test_text_pooling_ignores_padding(tiny_config):
    """EOT pooling under a causal mask: extra padding after the end-of-text token changes nothing."""
    model = HfmmCLIPModel(tiny_config).eval()
    ids, mask = text_inputs(batch=1, length=6)
    padded = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = model.get_text_features(ids).pooler_output
        long = model.get_text_features(padded, attention_mask=(padded != 0).long()).pooler_output
        unmasked = model.get_text_features(padded).pooler_output
    assert (short - long).abs().max() < 1e-5 and (short - unmasked).abs().max() < 1e-5


@pytest.mark.parametrize("vision", [{}, {"class_token_length": 8, "global_average_pool": True}])
def test_eager_equals_sdpa(vision):
    config = tiny_clip_config(vision=vision)
    eager = HfmmCLIPModel(config).eval()
    eager.set_attn_implementation("eager")
    sdpa = HfmmCLIPModel(config).eval()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.set_attn_implementation("sdpa")
    assert sdpa.text_model.config._attn_implementation == "sdpa"
    ids, mask = text_inputs()
    pixels = torch.randn(2, 3, 30, 30)
    (ie, te), (is_, ts) = embeddings(eager, pixels, ids, mask), embeddings(sdpa, pixels, ids, mask)
    assert (ie.pooler_output - is_.pooler_output).abs().max() <= 1e-5
    assert (te.pooler_output - ts.pooler_output).abs().max() <= 1e-5


def test_save_load_round_trip_is_bit_identical(tmp_path, tiny_config):
    model = HfmmCLIPModel(tiny_config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), HfmmCLIPConfig)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is HfmmCLIPModel
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path)
    assert type(zero_shot) is HfmmCLIPModel
    ids, mask = text_inputs()
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(model(ids, pixels, mask).logits_per_image, loaded(ids, pixels, mask).logits_per_image)


def test_gradient_checkpointing_gives_same_gradients(tiny_config):
    ids, mask = text_inputs()
    pixels = torch.randn(2, 3, 30, 30)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = HfmmCLIPModel(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.text_model.encoder.layers[0].gradient_checkpointing
        out = model(ids[:2], pixels, mask[:2], return_loss=True)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-7, msg=name)


def test_multiple_class_tokens_and_global_average_pool():
    """NeMo semantics: K class tokens, positions for N + K, pooled = mean over every LayerNorm-ed token."""
    config = HfmmCLIPVisionConfig(**tiny_clip_config().vision_config.to_dict() | {"class_token_length": 8})
    tower = HfmmCLIPVisionModel(config).eval()
    assert tower.embeddings.class_embedding.shape == (8, 32)
    assert tower.embeddings.position_embedding.weight.shape == (225 + 8, 32)
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        out = tower(pixels)
        torch.testing.assert_close(out.pooler_output, tower.post_layernorm(out.last_hidden_state[:, 0]))
        tower.config.global_average_pool = True
        pooled = tower(pixels).pooler_output
    torch.testing.assert_close(pooled, tower.post_layernorm(out.last_hidden_state).mean(dim=1))


def test_patch_embedding_bias_adds_to_every_patch():
    config = tiny_clip_config(vision={"patch_embedding_bias": True}).vision_config
    tower = HfmmCLIPVisionModel(config).eval()
    pixels = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        with_bias = tower.embeddings(pixels)
        bias = tower.embeddings.patch_embedding.bias.clone()
        tower.embeddings.patch_embedding.bias.zero_()
        without = tower.embeddings(pixels)
    torch.testing.assert_close(with_bias[:, 1:] - without[:, 1:], bias.expand(1, 225, 32))
    assert torch.equal(with_bias[:, 0], without[:, 0])


def test_patch_dropout_and_drop_path_are_training_only():
    config = tiny_clip_config(vision={"drop_patch_rate": 0.5, "drop_path_rate": 0.5, "class_token_length": 2})
    model = HfmmCLIPModel(config)
    plain = HfmmCLIPModel(tiny_clip_config(vision={"class_token_length": 2}))
    plain.load_state_dict(model.state_dict())
    pixels = torch.randn(2, 3, 30, 30)
    model.train()
    embedded = model.vision_model.embeddings(pixels)
    assert embedded.shape == (2, 2 + 112, 32)  # both class tokens kept, int(225 * 0.5) patches
    class_tokens = (
        model.vision_model.embeddings.class_embedding + model.vision_model.embeddings.position_embedding.weight[:2]
    )
    torch.testing.assert_close(embedded[:, :2], class_tokens.expand(2, -1, -1))
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixels).pooler_output, plain.get_image_features(pixels).pooler_output
        )
    rates = [layer.drop_path_rate for layer in model.vision_model.encoder.layers]
    assert rates == [0.0, 0.5]


def test_siglip_model_type_and_bias():
    tiny = tiny_clip_config()
    config = HfmmSigLIPConfig(vision_config=tiny.vision_config, text_config=tiny.text_config, projection_dim=16)
    model = AutoModel.from_config(config)
    assert type(model) is hfmm.HfmmSigLIPModel and "siglip" in config.model_type
    assert model.logit_bias.item() == -10.0
    ids, mask = text_inputs(batch=2)
    with torch.no_grad():
        out = model(ids, torch.randn(2, 3, 30, 30), mask, return_loss=True)
    torch.testing.assert_close(
        out.logits_per_image, model.logit_scale.exp() * out.image_embeds @ out.text_embeds.t() - 10
    )
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: HfmmCLIPConfig.from_preset("ViT-Q-99"), "Unknown preset"),
        (lambda: tiny_clip_config(vision={"num_attention_heads": 5}), "multiple of `num_attention_heads`"),
        (lambda: tiny_clip_config(text={"hidden_act": "relu"}), "hidden_act"),
        (lambda: tiny_clip_config(vision={"image_size": 31}), "multiple of `patch_size`"),
        (lambda: tiny_clip_config(vision={"model_type": "clip_vision_model"}), "vision_config.model_type"),
        (lambda: tiny_clip_config(vision={"interpolation": "lanczos"}), "interpolation"),
        (lambda: tiny_clip_config(vision={"image_mean": [0.5, 0.5]}), "image_mean"),
        (lambda: tiny_clip_config(vision={"class_token_length": 0}), "class_token_length"),
    ],
)
def test_bad_config_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_convnext_hidden_size_mismatch_is_named():
    config = HfmmCLIPConfig(
        vision_config={
            "model_type": "hfmm_convnext_vision_model",
            "timm_model_name": "convnext_atto",
            "hidden_size": 321,
        },
        text_config=tiny_clip_config().text_config.to_dict(),
        projection_dim=16,
    )
    with pytest.raises(ValueError, match="hidden_size`=321 does not match convnext_atto's 320"):
        HfmmCLIPModel(config)


def test_wrong_image_size_is_a_value_error(tiny_config):
    model = HfmmCLIPModel(tiny_config).eval()
    with pytest.raises(ValueError, match="does not match the model"):
        model.get_image_features(torch.randn(1, 3, 32, 32))


def test_flash_attention_without_flash_attn_is_a_clear_error(tiny_config):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        pytest.skip("flash-attn is usable here; the GPU test covers it")
    with pytest.raises((ImportError, ValueError), match="(?i)flash"):
        AutoModel.from_config(tiny_config, attn_implementation="flash_attention_2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with flash-attn")
def test_flash_attention_matches_sdpa_on_gpu(tiny_config):
    pytest.importorskip("flash_attn", reason="flash-attn (extra `gpu`) is not installed")
    sdpa = HfmmCLIPModel(tiny_config).eval().cuda().half()
    flash = AutoModel.from_config(tiny_config, attn_implementation="flash_attention_2").eval().cuda().half()
    flash.load_state_dict(sdpa.state_dict())
    ids, mask = text_inputs()
    pixels = torch.randn(2, 3, 30, 30, device="cuda", dtype=torch.half)
    (si, st), (fi, ft) = (embeddings(m, pixels, ids.cuda(), mask.cuda()) for m in (sdpa, flash))
    assert (si.pooler_output - fi.pooler_output).abs().max() <= 1e-2
    assert (st.pooler_output - ft.pooler_output).abs().max() <= 1e-2
