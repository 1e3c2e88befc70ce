"""Evaluation metrics: ranking (HR/NDCG/MRR from ranks) and text (BLEU/ROUGE). Text metrics import lazily."""

from common.metrics.ranking import RankingMetrics, hit_at_k, mrr, ndcg_at_k, rank_of_target

__all__ = ["RankingMetrics", "hit_at_k", "mrr", "ndcg_at_k", "rank_of_target"]
