"""Training for VideoSSM: demo VAE, bidirectional teacher, stage 1 (causal few-step distillation with
Self-Forcing DMD) and stage 2 (long self-rollout with the global memory), data-parallel under torchrun.

Entry point: ``videossm train ...`` / ``python -m videossm_core.training ...`` (see ``cli.py``).
"""
