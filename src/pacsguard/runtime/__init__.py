"""The runtime behind `serve`: the registry of parts, their services, and the event outputs
(store, sinks, bus) that every command which publishes events opens the same way."""
