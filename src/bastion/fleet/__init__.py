"""Fleet over NATS JetStream: alerts to subjects per host and class from an
on-disk queue, signed policy rollout from a key-value bucket, host status."""

from bastion.fleet.config import FleetSpec, parse_fleet_section

__all__ = ["FleetSpec", "parse_fleet_section"]
