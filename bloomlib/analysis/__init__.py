"""Measurement tools for the Analyze and Evaluate lessons.

    linear_attention   Katharopoulos et al.'s kernel attention (memory linear in T) and the weights it implies
"""
from bloomlib.analysis.linear_attention import feature_map, linear_attention, linear_attention_weights

__all__ = ["feature_map", "linear_attention", "linear_attention_weights"]
