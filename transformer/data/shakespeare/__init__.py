"""The embedded offline corpus."""
