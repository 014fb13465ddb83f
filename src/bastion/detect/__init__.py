"""Detection: rules turn events into findings; they never act."""
