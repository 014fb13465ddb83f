"""Response: the one place that turns findings into actions and alerts."""
