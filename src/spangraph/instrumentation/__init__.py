"""Auto-instrumentors that turn third-party libraries' calls into spangraph spans."""
