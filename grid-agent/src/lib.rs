//! grid-agent: the reference daemon that runs on each Raspberry Pi next to one battery, executes
//! schedules through the hardware safety layer, acknowledges them and reports telemetry.
