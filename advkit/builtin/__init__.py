"""advkit's built-in components. They are registered through entry points like any plugin and use only
the public API, so they double as worked examples for plugin authors."""
