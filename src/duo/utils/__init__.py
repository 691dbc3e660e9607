"""Small shared utilities (atomic file writes, seeding, row chunks, autograd memory)."""
