"""What keeps the service running: worker supervision (more of the runtime moves here over time)."""
