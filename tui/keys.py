"""The builder's keys, read from the live bindings of its app, screen and graph view, so
that the help screen (`?`) and the command palette's actions cannot drift from them."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Key", "key_table"]


@dataclass(frozen=True)
class Key:
    """One action and every key bound to it."""

    where: str         # where the keys work: "everywhere", "graph", ...
    keys: str          # as the footer shows them: "^s", "↑ / k"
    description: str
    action: str        # the action string, e.g. "save" or "move('up')"
    owner: object      # the app, screen or widget whose action it is


def key_table(app, sections) -> list[Key]:
    """The keys of `sections` ((where, node) each: the app, a screen, a widget), in that
    order; one row per action, its keys joined. A priority key works everywhere; a key
    bound twice counts where it is bound first; Textual's own system keys are left out."""
    rows: dict[tuple[int, str], list] = {}
    seen: set[str] = set()
    for where, node in sections:
        # _bindings: the node's bindings merged over its classes, as Textual dispatches them
        for key, bindings in node._bindings.key_to_bindings.items():
            binding = bindings[-1]  # a subclass's binding replaces its base's
            if binding.system or (where, key) in seen:
                continue
            seen.add((where, key))
            section = "everywhere" if binding.priority else where
            row = rows.setdefault((id(node), binding.action, section),
                                  [section, [], binding.description or binding.action,
                                   binding.action, node])
            row[1].append(app.get_key_display(binding))
    return [Key(where, " / ".join(keys), description, action, owner)
            for where, keys, description, action, owner in rows.values()]
