"""What runs leave behind: run records under runs/ (store), their provenance, reports, diffs,
MEMORY.md blocks, and `wb import`."""
