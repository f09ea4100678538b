"""Prediction logging, training baselines and skew detection."""
