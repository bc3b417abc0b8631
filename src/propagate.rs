//! Deadline propagation headers.
