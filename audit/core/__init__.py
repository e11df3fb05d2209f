"""The ground floor that every plugin builds on: the plugin registry and discovery, errors, safe paths,
datasets, split models, Lightning training, statistics, the result and feature stores, the record
schema and the timing profile. Nothing here imports the plugin packages or the engine above
(tests/test_layers.py; docs/ARCHITECTURE.md)."""
