"""The Textual terminal network builder."""
