"""Datagen replica: decode videos, generate Catch-the-Patch clips, serve them."""
