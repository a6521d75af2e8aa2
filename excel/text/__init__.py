"""Text side: prompt encoding, the text bank and TSE (algorithm.md §2, §3).

bank.py: prompts, TSE aggregation, the text bank; knowledge.py and cluster_bank.py: knowledge bases, cluster banks.
"""
from excel.text.bank import TSE_MIXES, build_text_bank, encode_prompts, num_masked, tse_aggregate
from excel.text.cluster_bank import (ClusterBank, ClusterBankError, build_cluster_bank, get_cluster_bank,
                                     load_cluster_bank, prepare_cluster_bank, save_cluster_bank)
from excel.text.knowledge import KnowledgeBaseError, load_knowledge_base

__all__ = [
    "TSE_MIXES", "build_text_bank", "encode_prompts", "num_masked", "tse_aggregate",
    "build_cluster_bank", "get_cluster_bank", "load_cluster_bank", "load_knowledge_base",
    "ClusterBank", "ClusterBankError", "prepare_cluster_bank", "save_cluster_bank",
    "KnowledgeBaseError",
]
