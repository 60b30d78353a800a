"""MQTT: the collector's persistent QoS 1 session, the topic contract, the client."""
