"""Deployment targets: profiles, runtime adapters that run artifacts, bundle templates."""
