"""The edge agent daemon. Must never import tensorflow, torch or coremltools."""
