"""Offline metric implementations (sklearn/scipy), equivalent to the HF ``evaluate`` metrics."""
