"""Ranking: models (one file per model, registry), config, train, evaluate, export, bench, demo."""
