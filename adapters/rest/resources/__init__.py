"""REST resources, one module per area; each exposes ``routes`` (an ApiRoutes)."""
