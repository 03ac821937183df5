"""Training: recipes, loop, distributed."""
