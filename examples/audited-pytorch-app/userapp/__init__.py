"""userapp: a PyTorch Flower app like those `flwr new` generates, on offline MNIST."""
