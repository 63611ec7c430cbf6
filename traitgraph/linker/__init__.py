"""The linker: merge methods, streaming link into a checkpoint, the lock file, interference."""
