"""Seeds derived by hashing names, so a stream's randomness never depends on what ran before."""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from the parts' text: derive_seed("train", "adding", 50, 0)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(*parts, device: str = "cpu") -> torch.Generator:
    """A local torch.Generator seeded from `parts` (never the global RNG)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
