"""Benchmark across SSL baselines and data budgets: plain vs distilled, every stage of the pipeline."""
