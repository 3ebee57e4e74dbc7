"""slmzoo's first-party components, registered through the ``slmzoo`` entry-point group like any plugin."""
