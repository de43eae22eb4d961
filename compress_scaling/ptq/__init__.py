"""Post-training quantization (Xu et al. 2024, arXiv 2410.12119; Frantar et al. 2022 GPTQ)."""
