"""What leaves the library: the exported HF folder with its manifest and tar, and the compact
archive format. May import optishear.model and optishear.core."""
