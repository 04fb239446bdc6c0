"""Training stages (1, 1.5, 2, DPO) on DeepSpeed ZeRO-2: specs, optimizer groups, loops, launch."""
