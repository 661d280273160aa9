"""The application layer: what netc's commands and the builder do with the compiler and
the runtime (a session: a checked spec, its settings, its lowering, its data, a trainer)."""
