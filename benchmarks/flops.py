"""FLOP accounting for the benchmarks: GPU peaks, ``6 N T`` training FLOPs, MFU.

Moved out of ``ecrec`` (only benchmarks use it). MFU (model FLOPs
utilisation) = model FLOPs of the **real** (non-padding) tokens / seconds /
the card's dense bf16 peak: padding is not useful work, so a loop that pads
to 128 is charged for it.

Sources: ``6 N T`` (training) and ``2 N T`` (inference), ``N`` = parameters
outside the embedding tables, ``T`` = tokens: Kaplan et al., 2020, "Scaling
Laws for Neural Language Models" (attention's ``seq^2`` term is left out: small
at 32-128 tokens for a 384-wide model). Peaks: the vendors' data sheets, dense
(no 2:4 sparsity) bf16 tensor-core FLOP/s; fp16 for T4 and V100, which have no bf16.
"""

from __future__ import annotations

__all__ = ["PEAK_BF16_FLOPS", "peak_bf16_flops", "transformer_flops", "non_embedding_params", "mfu"]

# Dense bf16 (fp16 for T4/V100) tensor-core peaks, FLOP/s. Longer names first: "A10G" before "A10".
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "A10": 125e12,
    "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "T4": 65e12, "V100": 125e12,
}


def peak_bf16_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s from its name (``torch.cuda.get_device_name()``), or None if unknown.

    >>> peak_bf16_flops("NVIDIA H100 80GB HBM3")
    989000000000000.0
    """
    for key, peak in PEAK_BF16_FLOPS.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def transformer_flops(n_params: int, tokens: int, *, training: bool = True) -> float:
    """Approximate FLOPs: ``6 N T`` for training (forward + backward), ``2 N T`` for inference.

    Raises:
        ValueError: a negative count.
    """
    if n_params < 0 or tokens < 0:
        raise ValueError(f"n_params and tokens must be >= 0, got {n_params}, {tokens}")
    return (6.0 if training else 2.0) * n_params * tokens


def non_embedding_params(model) -> int:
    """Parameters of a torch ``model`` outside its embedding tables (names containing ``embeddings``).

    21.3M for MiniLM-L6 (22.7M in all) plus the head.
    """
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """``flops / seconds / peak``; None when the peak is unknown.

    Raises:
        ValueError: ``seconds`` <= 0.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return None if not peak else flops / seconds / peak
