"""Data sources: 3DIdent (render, store) and, later, other pair sources."""
