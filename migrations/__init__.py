"""Schema migrations of the catalog, one SQL file a step (shipped as backshift.migrations)."""
