"""Built-in apps. Each module's app class is importable without torch."""
