"""Tiny models and inputs for the core tests (CPU, a few thousand parameters)."""

import torch

from videossm_core.config import get_preset
from videossm_core.model.transformer import CausalWanModel


def make_tiny_model(seed: int = 0, active_memory: bool = False, **overrides) -> CausalWanModel:
    """A tiny model; with ``active_memory`` the memory's output gate and router are randomised so the
    global branch changes the output (a fresh model's memory adds exactly zero)."""
    torch.manual_seed(seed)
    config = get_preset("tiny").replace(**overrides)
    model = CausalWanModel(config).eval()
    with torch.no_grad():
        # The head is zero at init (Wan); give it weights so outputs depend on everything upstream.
        torch.nn.init.normal_(model.head.head.weight, std=0.2)
        if active_memory:
            for block in model.blocks:
                mem = block.self_attn.memory
                torch.nn.init.normal_(mem.out_gate.weight, std=0.3)
                torch.nn.init.normal_(mem.alpha_proj.weight, std=0.05)
                torch.nn.init.normal_(mem.beta_proj.weight, std=0.3)
                mem.router_b.fill_(1.0)
    return model




def text(seed: int, batch: int = 1) -> torch.Tensor:
    """Random text conditioning [B, text_len, text_dim] for the tiny preset."""
    cfg = get_preset("tiny")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.text_len, cfg.text_dim, generator=gen)
