"""Plain-PyTorch training core: config, model, losses, metrics and the training loop."""
