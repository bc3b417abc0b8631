//! Property tests of the latency window, the deadline formula and the health state machine.
