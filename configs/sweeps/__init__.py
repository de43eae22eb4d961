"""Sweep configs: one module per paper, each with `runs(arg)` and `get_config(arg)`.

    unified     Frantar et al. 2025: 17 compressions x N x tokens/param (the eff(C) table)
    qat_law     Chen et al. 2025: W4A4 / W4A16 / W16A4 x group size x N x D, FC2 at 8 bits
    precision   Kumar et al. 2024: weight-only and activation-only bit sweeps x N x D
    sparse_law  Frantar et al. 2023: sparsity 0 / 50 / 75 / 87.5% x N x steps

arg: "paper", "mini" (the same design at CPU scale), "quick" (~10-minute slice of mini) or
"<variant>/<run name>" (one run). Run a sweep with `python -m launch.sweep
configs/sweeps/unified.py:mini --out DIR`; train one run with `python -m compress_scaling.main
--config=configs/sweeps/unified.py:mini/<run name> --workdir=DIR`. Shared helpers: common.py.
"""
