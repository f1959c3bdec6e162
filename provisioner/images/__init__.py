"""Versioned, immutable images: definitions, builds, imports and the content-addressed store."""
