"""Typed configuration: attrs schemas, Hydra registration, and builders of objects."""
