"""The edge agent daemon. Must never import tensorflow, torch or coremltools.

Kept empty of imports on purpose: `import agent` must stay light (an ARM box imports it at boot).
The Python API lives in `agent.engine` (Engine, InferResult) and `agent.models` (load_model).
"""

__version__ = "0.1.0"
