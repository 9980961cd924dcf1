"""Surgical video data: preparation, dataset registry, torch datasets."""
