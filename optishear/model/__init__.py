"""Model access: loading (HF folders, .gguf, registered names, hub ids), the decoder-block
adapter, block streaming, the forward-time overlay of candidate weights, on-disk backups and
giving memory back. May import optishear.core and optishear.config."""
