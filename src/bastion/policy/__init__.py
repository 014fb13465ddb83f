"""HIPS policy: model, parse, resolve, compile (pure), apply, learn."""
