"""Corpus embedding: a corpus file -> a folder of Parquet shards, resumable, on one machine (engine.py) or
a Ray cluster (ray.py); readers.py parses the input formats, output.py writes shards and the run manifest."""
