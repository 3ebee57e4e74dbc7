"""First-party model cards, registered as a card folder through the ``slmzoo`` entry-point group."""

from pathlib import Path

from slmzoo import hookimpl


@hookimpl
def slmzoo_register_cards(register):
    register(Path(__file__).parent)
