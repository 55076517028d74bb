"""Attend-and-Excite (Chefer et al. 2023) and its HRV variant A&E-HRV (Park et al., arXiv 2412.02237): latent
updates in the first sampling steps that raise every subject word's largest cross-attention, wrapped around any
ComfyUI sampler. Subject maps are HRV-weighted averages over all heads and layers (A&E-HRV) or the head average of
the 16x16 layers (original)."""
from .processor import EXCITE, ExciteCollector, ExciteProcessor
from .request import (
           FEATURE,
           ExciteError,
           ExcitePlan,
           ExciteRequest,
           ExciteSettings,
           StepRecord,
           Subject,
)
from .sampler import install_excite

__all__ = ["EXCITE", "FEATURE", "ExciteCollector", "ExciteError", "ExcitePlan", "ExciteProcessor", "ExciteRequest",
           "ExciteSettings", "StepRecord", "Subject", "install_excite"]
