"""Lightning callbacks: figures and metrics sent to the logger and saved in the run directory."""
