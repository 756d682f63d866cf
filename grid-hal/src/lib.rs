//! grid-hal: battery hardware traits in the embedded-hal style, drivers, a simulated battery and the
//! safety layer that keeps every setpoint inside the battery's envelope.
