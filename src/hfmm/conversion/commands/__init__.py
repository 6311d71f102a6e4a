"""One module per converter command: `hfmm convert <name>` and `python convert/<module>.py` run its `run`."""
