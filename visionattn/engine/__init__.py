"""What the programs in :mod:`visionattn.tools` share (cf. ``timm/utils/`` and torchvision's
detection references), one job per module:

* :mod:`~visionattn.engine.cli`: :class:`UsageError` and :func:`run_cli`, a program's console entry
  (exit codes, ``error: ...`` without a traceback, the resume hint on Ctrl-C); checks that an output place is writable.
* :mod:`~visionattn.engine.files`: atomic file writes and JSON-friendly values.
* :mod:`~visionattn.engine.checkpoint`: training checkpoints (``last.pth.tar``) with RNG states,
  fine-tuning starts, the exported ``model.safetensors`` + ``config.json``.
* :mod:`~visionattn.engine.distributed`: device, ``torchrun`` process group, reductions, DDP/FSDP2.
* :mod:`~visionattn.engine.data`: class-folder and timm datasets, subsets, samplers, loaders.
* :mod:`~visionattn.engine.digits`: the demo data (scikit-learn's bundled digits).
* :mod:`~visionattn.engine.config`: YAML config files merged with argparse, ``key=value`` kwargs.
* :mod:`~visionattn.engine.model`: a model by name, with pretrained weights from any source.
* :mod:`~visionattn.engine.optim`: optimizer (layer-wise LR decay), loss and Mixup/CutMix from flags.
* :mod:`~visionattn.engine.evaluation`: top-1/top-5 evaluation and the AMP precision choice.
* :mod:`~visionattn.engine.reports`: per-epoch CSV/JSON logs, curves, the run summary.

The layer sits above :mod:`visionattn.models` and below :mod:`visionattn.tools` (and beside
:mod:`visionattn.detection`, which uses it); nothing here imports a program. Import the modules
themselves (``from visionattn.engine.files import atomic_write``); this package imports none of
them, so ``import visionattn.engine`` costs nothing.
"""
