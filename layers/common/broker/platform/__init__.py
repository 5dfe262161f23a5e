"""Configuration, AWS clients, outbound HTTP, deadlines, observability, errors and lifecycle
events: what every other part stands on."""
