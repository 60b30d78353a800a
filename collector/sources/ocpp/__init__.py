"""OCPP 1.6J / 2.0.1 chargers as a source: a WebSocket listener that is the chargers' back end
(csms mode) or sits in front of the operator's (relay mode), and reads their metering."""
