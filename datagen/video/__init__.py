"""Video files in, decoded frames out: the manifest, packet indexes, containers and the decoders."""
