"""The decoder (algorithm.md §6, decoder.py) and the full model (excel.py)."""
from excel.backbone.svc import lvc_bias
from excel.model.decoder import DecoderOutput, FusionHead, SegDecoder, TransformerDecoder, attn_pred, build_decoder
from excel.model.excel import (EncodeOutput, ExCEL, ForwardOutput, build_model, build_text_bank_from_config,
                               load_configured_clip)

__all__ = [
    "lvc_bias", "DecoderOutput", "FusionHead", "SegDecoder", "TransformerDecoder", "attn_pred", "build_decoder",
    "EncodeOutput", "ExCEL", "ForwardOutput", "build_model", "build_text_bank_from_config", "load_configured_clip",
]
