"""Small shared helpers: run directories, figure saving and logging, rank-zero printing."""
