"""Warm boots: pools of saved, already-booted spares, and restoring one as an instance."""
