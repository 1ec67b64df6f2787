"""clinvert."""
