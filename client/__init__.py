"""The hospital side: the Flower ClientApp and local training."""
