//! Everything the layer knows per peer: its key, latency window, state and the table.

pub(crate) mod health;
pub(crate) mod key;
pub(crate) mod state;
pub(crate) mod table;
pub(crate) mod window;

#[cfg(test)]
mod proptests;
