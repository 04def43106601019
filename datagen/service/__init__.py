"""The datagen service: a replica serves generated batches over gRPC (shared memory on the same host),
registers in Redis, and quarantines unreadable videos fleet-wide. See docs/service.md."""
