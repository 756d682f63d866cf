//! grid-proto: the versioned wire protocol between the fleet server and the agents, the MQTT topic
//! scheme, the JSON and binary codecs, signatures and the sans-IO delivery state machines.
