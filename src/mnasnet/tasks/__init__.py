"""Training tasks for :mod:`mnasnet.engine`: each supplies data, model, loss, validation and weights files."""
