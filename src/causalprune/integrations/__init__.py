"""Causal pruning where users already train: Lightning (`lightning`) and the Hugging Face Trainer (`transformers`).

Each integration is an optional extra (``pip install causalprune[lightning]`` /
``causalprune[transformers]``) and wraps `causalprune.CausalPruner`, the one
implementation of Algorithm 1's rounds.
"""
