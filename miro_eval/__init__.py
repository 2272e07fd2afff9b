"""miro_eval package."""
