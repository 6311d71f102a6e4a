"""megatron-core NeMo CLIP (`linear_qkv`) -> hfmm, against megatron-core's own forward on CPU.

`nemo_megatron.py` builds NeMo's megatron-core CLIP from megatron-core 0.16.1 (class tokens 1 and 8; QuickGELU, exact
GELU and the fused tanh GELU) at TP=1 and TP=2 under gloo, saves it as NeMo does (`model_weights.ckpt`,
`mp_rank_XX/`, and with megatron-core's own `dist_checkpointing.save` as `torch_dist` in NeMo 1's `model_weights/` and
NeMo 2's `weights/`) and records megatron-core's outputs. megatron-core is a test dependency (the `dev` extra): without
it these tests fail, they do not skip.
"""

import importlib.util
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from nemo_fixtures import hf_clip_tokenizer_files, pack_nemo
from transformers import AutoModel, AutoTokenizer

import hfmm  # noqa: F401  (registers the Auto classes)
from hfmm.conversion.commands import nemo_clip_to_hfmm
from hfmm.conversion.nemo.megatron import split_qkv
from hfmm.models.clip.processing_clip import HfmmCLIPTokenizer

HERE = Path(__file__).resolve().parent

TOLERANCE = 1e-5
CASES = [  # variant, source form
    ("tp1_cls1", "folder"),  # Transformer Engine names, io.BytesIO _extra_state, vision QuickGELU, text exact GELU
    ("tp1_cls1", "tar"),
    ("tp1_cls8", "folder"),  # local-spec names, vision fused (tanh) GELU, text QuickGELU
    ("tp1_cls8", "dist-nemo"),  # torch_dist in a .nemo tar (NeMo 1 model_weights/)
    ("tp2_cls8", "gzip"),  # mp_rank_00/, mp_rank_01/
    ("tp2_cls8", "dist"),  # NeMo 2 folder: context/model.yaml + weights/ saved at TP=2
    ("tp2_cls1", "folder"),  # TE names at TP=2, text fused GELU
]


@pytest.fixture(scope="module")
def megatron_checkpoints(tmp_path_factory) -> Path:
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
        pytest.fail("megatron-core is not installed; it is the reference of these tests: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("megatron")
    run = subprocess.run([sys.executable, str(HERE / "nemo_megatron.py"), str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.fail(f"building the megatron-core fixtures failed:\n{run.stderr[-3000:]}")
    return out


def source(root: Path, variant: str, form: str, tmp_path: Path) -> Path:
    if form in ("folder", "dist"):
        return root / variant / ("ckpt" if form == "folder" else "dist")
    folder = root / variant / ("dist" if form == "dist-nemo" else "ckpt")
    return pack_nemo(folder, tmp_path / f"{variant}.nemo", gzip=form == "gzip")


def convert(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "hfmm"
    assert nemo_clip_to_hfmm.main([str(src), str(dst)]) == 0
    return dst


def edited_copy(folder: Path, dst: Path, **vision) -> Path:
    """A copy of an extracted `.nemo` whose `vision` config section gets `vision`."""
    shutil.copytree(folder, dst)
    config = yaml.safe_load((dst / "model_config.yaml").read_text())
    config["vision"].update(vision)
    (dst / "model_config.yaml").write_text(yaml.safe_dump(config))
    return dst


@torch.no_grad()
def embeddings(model, reference: dict) -> tuple[torch.Tensor, torch.Tensor]:
    image = model.get_image_features(pixel_values=reference["pixel_values"]).pooler_output
    text = model.get_text_features(input_ids=reference["input_ids"]).pooler_output
    return image, text


@pytest.mark.parametrize("variant, form", CASES)
def test_matches_megatron_core(megatron_checkpoints, tmp_path, variant, form):
    reference = torch.load(megatron_checkpoints / variant / "reference.pt", weights_only=True)
    model = AutoModel.from_pretrained(convert(source(megatron_checkpoints, variant, form, tmp_path), tmp_path)).eval()
    image, text = embeddings(model, reference)
    torch.testing.assert_close(image, reference["image_embeds"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(text, reference["text_embeds"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(model.logit_scale, reference["logit_scale"].reshape(1))
    class_tokens = 8 if "cls8" in variant else 1
    assert model.config.vision_config.class_token_length == class_tokens
    hidden = model.vision_model(pixel_values=reference["pixel_values"]).last_hidden_state  # before the final LN
    torch.testing.assert_close(hidden, reference["vision_hidden_states"], atol=TOLERANCE, rtol=0)


def test_activations_follow_nemo_rules(megatron_checkpoints, tmp_path):
    """`approx-gelu` is QuickGELU; `gelu` is exact unless `bias_activation_fusion`, which megatron-core computes with
    the tanh approximation; flipping the fusion flag (exact GELU on a fused model) misses the reference."""
    acts = {}
    for variant in ("tp1_cls1", "tp1_cls8"):
        dst = convert(megatron_checkpoints / variant / "ckpt", tmp_path / variant)
        config = AutoModel.from_pretrained(dst).config
        acts[variant] = (config.vision_config.hidden_act, config.text_config.hidden_act)
    assert acts == {"tp1_cls1": ("quick_gelu", "gelu"), "tp1_cls8": ("gelu_pytorch_tanh", "quick_gelu")}
    folder = edited_copy(
        megatron_checkpoints / "tp1_cls8" / "ckpt", tmp_path / "unfused", bias_activation_fusion=False
    )
    reference = torch.load(megatron_checkpoints / "tp1_cls8" / "reference.pt", weights_only=True)
    image, _ = embeddings(AutoModel.from_pretrained(convert(folder, tmp_path / "out")), reference)
    assert (image - reference["image_embeds"]).abs().max() > 10 * TOLERANCE


@pytest.mark.parametrize("variant", ["tp1_cls8", "tp2_cls8"])
def test_global_average_pool_with_eight_class_tokens(megatron_checkpoints, tmp_path, variant):
    """NeMo's legacy `global_average_pool` on megatron-core's tower: the head of the mean of every token (all 8 class
    tokens included) after the final LayerNorm, as recorded by the fixture from megatron-core's own modules."""
    reference = torch.load(megatron_checkpoints / variant / "reference.pt", weights_only=True)
    model = AutoModel.from_pretrained(convert(megatron_checkpoints / variant / "ckpt", tmp_path)).eval()
    model.vision_model.config.global_average_pool = True
    image, _ = embeddings(model, reference)
    torch.testing.assert_close(image, reference["global_average_pool_embeds"], atol=TOLERANCE, rtol=0)
    assert (reference["global_average_pool_embeds"] - reference["image_embeds"]).abs().max() > 0.1


def test_mcore_ignores_global_average_pool(megatron_checkpoints, tmp_path, capsys):
    """NeMo's megatron-core CLIP pools token 0 whatever `global_average_pool` says; so does the converted model."""
    folder = edited_copy(megatron_checkpoints / "tp1_cls8" / "ckpt", tmp_path / "gap", global_average_pool=True)
    model = AutoModel.from_pretrained(convert(folder, tmp_path)).eval()
    assert "global_average_pool is ignored" in capsys.readouterr().out
    reference = torch.load(megatron_checkpoints / "tp1_cls8" / "reference.pt", weights_only=True)
    image, _ = embeddings(model, reference)
    torch.testing.assert_close(image, reference["image_embeds"], atol=TOLERANCE, rtol=0)


def test_per_head_qkv_is_not_q_k_v(megatron_checkpoints, tmp_path):
    """Negative control: splitting megatron-core's fused QKV as `[q; k; v]` misses the reference by far."""
    reference = torch.load(megatron_checkpoints / "tp1_cls1" / "reference.pt", weights_only=True)
    model = AutoModel.from_pretrained(convert(megatron_checkpoints / "tp1_cls1" / "ckpt", tmp_path)).eval()
    weights = torch.load(megatron_checkpoints / "tp1_cls1" / "ckpt" / "model_weights.ckpt", weights_only=False)
    with torch.no_grad():
        for index, layer in enumerate(model.vision_model.encoder.layers):
            prefix = f"model.vision_encoder.decoder.layers.{index}.self_attention.linear_qkv."
            for name in ("weight", "bias"):
                q, k, v = split_qkv(weights[prefix + name])
                for proj, value in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                    getattr(getattr(layer.self_attn, proj), name).copy_(value)
    image, _ = embeddings(model, reference)
    assert (image - reference["image_embeds"]).abs().max() > 100 * TOLERANCE


def test_nemo2_tokenizer_folder(megatron_checkpoints, tmp_path):
    """NeMo 2 saves the HF tokenizer into `context/nemo_tokenizer/`; the converter uses those files."""
    folder = tmp_path / "nemo2"
    shutil.copytree(megatron_checkpoints / "tp2_cls8" / "dist", folder)
    hf_clip_tokenizer_files(folder / "context" / "nemo_tokenizer")
    dst = convert(folder, tmp_path)
    assert (
        AutoTokenizer.from_pretrained(dst)("a cat")["input_ids"]
        == HfmmCLIPTokenizer.from_package()("a dog")["input_ids"]
    )


@pytest.mark.parametrize("recorded", ["tok", "/home/me/tokenizers/tok"])
def test_nemo2_tokenizer_folder_named_in_the_context(megatron_checkpoints, tmp_path, recorded):
    """Issue 15 item 5: NeMo 2 copies a local tokenizer folder to `context/<folder name>/` and records its name (or
    the path it was given) as `tokenizer.pretrained_model_name`; the converter reads those files."""
    folder = tmp_path / "nemo2"
    shutil.copytree(megatron_checkpoints / "tp2_cls8" / "dist", folder)
    hf_clip_tokenizer_files(folder / "context" / "tok")
    model_yaml = yaml.safe_load((folder / "context" / "model.yaml").read_text())
    model_yaml["tokenizer"]["pretrained_model_name"] = recorded
    (folder / "context" / "model.yaml").write_text(yaml.safe_dump(model_yaml))
    dst = convert(folder, tmp_path)
    assert (
        AutoTokenizer.from_pretrained(dst)("a cat")["input_ids"]
        == HfmmCLIPTokenizer.from_package()("a dog")["input_ids"]
    )


def test_distributed_checkpoint_read_without_megatron(megatron_checkpoints, tmp_path, monkeypatch):
    """A `.metadata` naming megatron-core's `MCoreMetadata`/`MCoreSavePlan` (as older megatron-core wrote) converts in a
    process where `import megatron` fails."""
    from torch.distributed.checkpoint.metadata import Metadata

    from hfmm.conversion.nemo.archive import read_dcp_metadata

    folder = tmp_path / "nemo1"
    shutil.copytree(megatron_checkpoints / "tp1_cls8" / "dist", folder)
    weights = folder / "model_weights"
    original = read_dcp_metadata(weights, "fixture")
    module = types.ModuleType("megatron.core.dist_checkpointing.strategies.torch")
    module.MCoreMetadata = type("MCoreMetadata", (Metadata,), {"__module__": module.__name__})
    module.MCoreSavePlan = type("MCoreSavePlan", (), {"__module__": module.__name__})
    monkeypatch.setitem(sys.modules, module.__name__, module)
    legacy = module.MCoreMetadata.__new__(module.MCoreMetadata)
    legacy.__dict__.update(original.__dict__, planner_data={"plan": module.MCoreSavePlan()})
    (weights / ".metadata").write_bytes(pickle.dumps(legacy))
    monkeypatch.delitem(sys.modules, module.__name__)
    dst = tmp_path / "hfmm"
    code = (
        "import sys; sys.modules['megatron'] = None; "
        "from hfmm.conversion.commands.nemo_clip_to_hfmm import main; "
        f"sys.exit(main([{str(folder)!r}, {str(dst)!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    reference = torch.load(megatron_checkpoints / "tp1_cls8" / "reference.pt", weights_only=True)
    image, text = embeddings(AutoModel.from_pretrained(dst).eval(), reference)
    torch.testing.assert_close(image, reference["image_embeds"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(text, reference["text_embeds"], atol=TOLERANCE, rtol=0)
