"""Ablation studies as data: sweep files (``configs/ablations/*.yaml``), a sequential runner, W&B sweep
definitions for agent fleets, and a markdown/matplotlib report. The ``ablate`` command is ``common.ablation.cli``.

Nothing heavy is imported here; the runner imports the ``vip5``/``pmg`` programs only when a setting runs.
"""
