"""Code shared by the hospitals' ClientApp and the aggregation ServerApp."""
