"""edgekit: convert, bundle, sign, roll out and serve models on edge devices.

This package holds what every other part shares (CLI, config, model card, trust,
MQTT topic layout). It must stay light: no tensorflow, torch or coremltools here.
"""

__version__ = "0.1.0"
