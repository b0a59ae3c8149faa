"""The fleet server: registry, devices, signed manifests over MQTT, staged rollouts."""
