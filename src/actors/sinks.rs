//! Sinks: delivering the lifecycle stream to outbound webhooks.
//!
//! [`SinkStatus`] is what this node knows of its own deliveries (the leader
//! delivers): the position each sink's receiver acknowledged last, and the
//! last error, shown by `ListSinks` and in `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// This node's view of its sink deliveries.
#[derive(Debug, Default)]
pub struct SinkStatus {
    errors: Mutex<BTreeMap<String, String>>,
}

impl SinkStatus {
    /// The last delivery error of sink `name` (empty when its latest
    /// attempt succeeded or this node does not deliver to it).
    pub fn last_error(&self, name: &str) -> String {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.get(name).cloned().unwrap_or_default()
    }

    /// Records the outcome of the latest attempt to deliver to `name`.
    pub fn set_error(&self, name: &str, error: Option<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(error) => errors.insert(name.to_string(), error),
            None => errors.remove(name),
        };
    }
}
