"""The command palette (ctrl+p): every node of the checked network, found fuzzily by name
and op, and every action of the builder's keys (tui/keys.py), so none is left out."""
from __future__ import annotations

from functools import partial

from textual.command import Hit, Hits, Provider

__all__ = ["NodeCommands", "action_commands", "node_title"]

# Textual's own keys that make no sense as palette entries
NOT_COMMANDS = {"command_palette", "app.focus_next", "app.focus_previous", "screen.copy_text",
                "scroll_home", "scroll_end", "page_up", "page_down", "page_left", "page_right"}


def node_title(graph, node: str) -> str:
    """What the palette shows and matches for a node: its name and its op."""
    data = graph.nodes[node]
    return f"{node}  {data['op'].name if data['op'] is not None else data['kind']}"


class NodeCommands(Provider):
    """Nodes of the builder's last good check; choosing one selects it in the graph."""

    async def search(self, query: str) -> Hits:
        builder = self.screen
        good = getattr(builder, "good", None)
        if good is None or not query.strip():
            return
        matcher = self.matcher(query)
        graph = good.network.graph
        for node in graph.nodes:
            title = node_title(graph, node)
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(builder.go_to, node),
                          help=f"node · {graph.nodes[node].get('type')}")


def action_commands(keys):
    """(title, help, callback) for each action among `keys` (tui.keys.Key rows)."""
    done = set()
    for key in keys:
        if key.action in NOT_COMMANDS or key.action.startswith("move(") \
                or (id(key.owner), key.action) in done:
            continue
        done.add((id(key.owner), key.action))
        yield key.description, f"{key.keys} · {key.where}", partial(key.owner.run_action,
                                                                    key.action)
