//! grid-server: the reference fleet server (REST API with OpenAPI, PostgreSQL or SQLite storage,
//! MQTT transport, authentication and metrics).

pub mod store;
