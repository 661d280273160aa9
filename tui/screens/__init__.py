"""Screens of the builder: the builder itself, dialogs and the run panel."""
