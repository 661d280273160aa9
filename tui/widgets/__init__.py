"""Widgets of the builder: spec editor, graph view, inspector and loss plot."""
