"""duo: uniform-state discrete diffusion language models.

The structure follows the math: ``schedules`` -> ``duality`` -> ``processes`` ->
``losses`` -> ``samplers`` -> ``methods``; ``training`` is a thin Lightning shell.
"""

__version__ = "0.1.0"
