"""Log filters hfmm installs when imported: messages of other libraries that are noise for every hfmm user.

A filter on a named logger is all this does (no environment variable, no import of the library it concerns).
"""

import logging

# (logger, text) of the messages bitsandbytes' import gives on a machine without its optional CPU 4-bit kernel
BITSANDBYTES_NOISE = (
    ("bitsandbytes.backends.cpu.ops", "gemm_4bit_forward"),  # "Failed to load CPU gemm_4bit_forward ..."
    ("kernels._internals.hf_hub", "quantization-bitsandbytes"),  # "Skipping publisher trust check ..." (offline)
)


def quiet_bitsandbytes() -> None:
    """Drops bitsandbytes' import-time warnings that its optional CPU 4-bit kernel cannot be loaded.

    peft, imported by transformers' Trainer, imports bitsandbytes when it is installed, which then warns in every
    command and recipe; 4-bit loading itself (a NeVA recipe's `quantization:` section) does not need that kernel.
    """
    for name, text in BITSANDBYTES_NOISE:
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())
