import os
import signal

import pytest
import torch
from hub_double import hub  # noqa: F401  (the `hub` fixture: a local test double of the Hub's HTTP API)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sigint_as_in_a_terminal() -> None:
    """`preexec_fn` for a subprocess that a test interrupts: SIGINT at its default disposition, as for a command typed
    in a terminal (a job started in the background, as CI may start the suite, inherits SIGINT ignored, and Python
    then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_text_config(**overrides) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4) | overrides


def tiny_vision_config(**overrides) -> dict:
    return (
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=30,
            patch_size=2,
        )
        | overrides
    )


def tiny_clip_config(vision=None, text=None, **overrides):
    from hfmm import HfmmCLIPConfig

    return HfmmCLIPConfig(
        vision_config=tiny_vision_config(**(vision or {})),
        text_config=tiny_text_config(**(text or {})),
        projection_dim=16,
        **overrides,
    )


def clip_batch(n: int, dtype=torch.float32, seed: int = 3) -> dict:
    """Random pixels (30 px, the tiny config's size) and token ids framed by start/end-of-text, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 49000, (n, 12), generator=generator)
    ids[:, 0], ids[:, -1] = 49406, 49407
    return {"pixel_values": torch.randn(n, 3, 30, 30, generator=generator, dtype=dtype), "input_ids": ids}


@pytest.fixture
def tiny_config():
    return tiny_clip_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
