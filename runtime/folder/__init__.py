"""What a model folder is: its manifest (`gte-onnx.json`) and its schema, the integrity of its files
(sha256, sizes, paths confined to the folder, the cache of checked digests), and the source forms a
folder is built from (forms.py: checkpoint and ONNX layouts, the files that tell them apart)."""
