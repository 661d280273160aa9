"""netdsl: a declarative graph compiler and visual network builder for neural networks.

The package is layered; each layer imports only those below it (docs/architecture.md,
checked by tests/test_architecture.py):

- the compiler, here: the front end (`driver`: parse, expand, graph, shapes) makes a
  checked graph of a spec; the op library (`ops`) holds every fact about each op; the
  back end (`lower`) lowers a checked graph, pass by pass, into a plan for a target;
- the runtime (`netdsl.runtime`): runs a lowered plan on NumPy or CuPy, trains it;
- the application (`app`) and the command line (`cli`); the builder (`netdsl.tui`).

A new op is a class in its family's module under `ops/`; a new pass a module under
`lower/` listed in `lower.pipeline.PASSES`; a new target an entry of
`lower.pipeline.TARGETS`; a new command a subcommand of `cli` with its body in `app/`.
"""

__version__ = "0.1.0"
