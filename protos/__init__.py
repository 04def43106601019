"""The wire contract between datagen replicas and their clients (package ctp.datagen.v1).

`datagen.proto` is the source; `datagen_pb2*.py` are generated from it by `python -m protos.build`
(`make proto`) and committed, and both sides import them from here. A test fails when they are stale.
"""
