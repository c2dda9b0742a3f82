"""The HTTP API: one module per surface, named after what it serves; the request
plumbing they share is in service/api/plumbing/."""
