"""Small shared helpers: Delta I/O and job plumbing."""
