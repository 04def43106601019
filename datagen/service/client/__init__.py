"""The trainer side of the service: RemoteSource and the replicas it streams from."""
