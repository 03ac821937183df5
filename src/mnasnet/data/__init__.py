"""Preprocessing, datasets and ImageNet labels."""
