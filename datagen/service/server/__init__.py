"""The replica side of the service: the gRPC servicer, its work queue and its metrics."""
