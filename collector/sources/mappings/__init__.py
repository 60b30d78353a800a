"""Payload mappings: third-party MQTT devices (Shelly, Tasmota, Zigbee2MQTT, EVerest,
DSMR, Home Assistant) described in ``SOURCES_FILE`` and decoded into native readings."""
