"""Shared test helpers: a Mosquitto launcher, simulated devices, a fake `edgekit convert` output."""
