"""The aggregation side: the Flower ServerApp, strategy, central evaluation and run directory."""
