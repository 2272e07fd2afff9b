"""miro_models package."""
