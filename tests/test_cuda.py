"""CUDA paths that have a CPU twin: each result on the GPU is compared with the same computation on the CPU.

Every test here needs a CUDA GPU and skips without one (CI has none; they are run on a lent GPU machine with
`pytest -m gpu`). The GradCache dropout test, the bf16 Trainer test (tests/training/test_bf16.py) and the
loss tests have CUDA cases in their own files.
"""

import functools

import pytest
import torch
from conftest import clip_batch, tiny_clip_config
from neva_fixtures import save_tiny_neva, tiny_neva
from PIL import Image
from transformers import AutoModelForImageTextToText

from hfmm import HfmmCLIPModel
from hfmm.losses import CUDA_TILE_SIZE, clip_loss, naive_clip_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 matmuls, so fp32 results can be held to fp32 tolerances."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_clip_embeddings_on_cuda_equal_cpu():
    model = HfmmCLIPModel(tiny_clip_config()).eval()
    batch = clip_batch(8)
    with torch.no_grad():
        cpu = model(**batch, return_logits=False)
        model.cuda()
        gpu = model(**{k: v.cuda() for k, v in batch.items()}, return_logits=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(**{k: v.cuda() for k, v in batch.items()}, return_logits=False)
    for name in ("image_embeds", "text_embeds"):
        assert (getattr(gpu, name).cpu() - getattr(cpu, name)).abs().max() <= 1e-5, name
        assert (getattr(bf16, name).float().cpu() - getattr(cpu, name)).abs().max() <= 5e-2, name


def test_tiled_loss_memory_on_cuda_grows_linearly():
    """Peak CUDA memory of forward + backward at B = 65,536, d = 512 (fp32): the B x B logits alone would be 16 GiB;
    the tiled loss needs the inputs' gradients and a few (tile x tile) blocks whatever the batch (864 MiB measured on
    an H200 at the CUDA default tile of 8192)."""
    batch, dim = 65536, 512
    generator = torch.Generator(device="cuda").manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(batch, dim, device="cuda", generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(batch, dim, device="cuda", generator=generator), dim=-1)
    image.requires_grad_(), text.requires_grad_()
    scale = torch.tensor(20.0, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = clip_loss(image, text, scale, mode="local")
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    gradients, tiles = 2 * batch * dim * 4, 4 * CUDA_TILE_SIZE**2 * 4
    assert torch.isfinite(loss) and image.grad is not None and scale.grad is not None
    assert peak <= gradients + tiles, f"peak {peak / 2**20:.0f} MiB above the inputs"
    # the same loss on a slice of the batch, in fp64, equals the naive B x B computation there
    sub_image, sub_text = image[:2048].detach().double(), text[:2048].detach().double()
    scale64 = torch.tensor(20.0, device="cuda", dtype=torch.float64)
    naive = naive_clip_loss(sub_image, sub_text, scale64)
    tiled = clip_loss(sub_image, sub_text, scale64, mode="local")
    assert (tiled - naive).abs().item() <= 1e-12


@functools.cache
def _neva_cpu_inputs() -> dict:
    _, processor = tiny_neva()
    image = Image.new("RGB", (40, 40), (220, 20, 20))
    return dict(processor(images=image, text="<image> What colour is the square?", return_tensors="pt"))


def _neva_inputs(device: str) -> dict:
    return {k: v.to(device) for k, v in _neva_cpu_inputs().items()}


def test_neva_logits_and_greedy_answer_on_cuda_equal_cpu():
    model, _ = tiny_neva()
    with torch.no_grad():
        cpu_logits = model(**_neva_inputs("cpu")).logits
        cpu_ids = model.generate(**_neva_inputs("cpu"), max_new_tokens=12, min_new_tokens=12, do_sample=False)
        model.cuda()
        gpu_logits = model(**_neva_inputs("cuda")).logits
        gpu_ids = model.generate(**_neva_inputs("cuda"), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert (gpu_logits.cpu() - cpu_logits).abs().max() <= 1e-4
    assert torch.equal(gpu_ids.cpu(), cpu_ids)


def test_neva_four_bit_on_cuda_equals_bitsandbytes_cpu(tmp_path):
    """NF4 weights are quantized the same way on both devices, so with an fp32 compute dtype the CUDA kernels' logits
    equal bitsandbytes' CPU path; the language model's linear layers are 4-bit on the GPU."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes (the `quant` extra) is not installed")
    from transformers import BitsAndBytesConfig

    folder = save_tiny_neva(tmp_path / "neva")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    logits, footprint = {}, {}
    for device in ("cpu", "cuda"):
        model = AutoModelForImageTextToText.from_pretrained(
            folder, quantization_config=quantization, device_map=device
        )
        layer = model.model.language_model.layers[0].self_attn.q_proj
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.device.type == device
        with torch.no_grad():
            logits[device] = model(**_neva_inputs(device)).logits.cpu()
        footprint[device] = model.get_memory_footprint()
        inputs = _neva_inputs(device)
        answer = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert answer.shape[1] == inputs["input_ids"].shape[1] + 4
    full = AutoModelForImageTextToText.from_pretrained(folder).get_memory_footprint()
    assert (logits["cuda"] - logits["cpu"]).abs().max() <= 1e-4
    assert footprint["cuda"] < full
