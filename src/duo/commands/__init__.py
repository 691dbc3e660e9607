"""Sub-commands of the ``duo`` CLI other than ``train`` (which lives in ``duo.cli``)."""
