"""Command-line tools, installed with the package.

Each module has ``main(argv) -> dict`` (importable, returns its results) and ``cli(argv) -> int``
(the console entry point). The scripts in the repository's ``tools/`` folder are two-line front
ends to these modules, so ``python tools/train.py ...``, ``python -m visionattn.tools.train ...``,
``torchrun ... tools/train.py ...`` and the installed ``visionattn-train`` command are the same
program. (timm's own ``train.py``/``validate.py``/``benchmark.py`` are not part of its wheel; ours
are, so they can be imported and tested.)

Each module is a program of one job; what they share (CLI runner, atomic writes, checkpoints,
distributed setup, datasets and loaders, config files, reports) is :mod:`visionattn.engine`, and
no tool imports another.

Nothing here is imported by ``import visionattn``.
"""
