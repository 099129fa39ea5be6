//! Which parts of a job's payload are secrets, and how they read back.
//!
//! Secret values: the `http` type's `Authorization`, `Cookie` and
//! `Proxy-Authorization` headers (names compared case-insensitively), and
//! every value of the `exec` type's `env`. A caller without `job:secrets`
//! reads each as [`REDACTED`] ([`redact`]). So that such a caller can read a
//! job, change something and write it back, an update whose secret value
//! is exactly [`REDACTED`] keeps the stored value ([`restore`]); the update
//! carries the version it read, so the stored value is the one it saw.
//!
//! IMPLEMENTATION CAVEATS: a payload that is not a JSON object is left as
//! it is (it cannot hold these fields); redaction re-encodes the JSON, so
//! key order and spacing may differ from what was stored.

use serde_json::{Map, Value};

/// What a secret value reads as without `job:secrets`.
pub const REDACTED: &str = "<redacted>";

/// The `http` headers whose values are secrets (lowercase).
const SECRET_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// The secret string values of `payload`'s object, for `job_type`.
fn secret_values<'a>(job_type: &str, object: &'a mut Map<String, Value>) -> Vec<&'a mut Value> {
    match job_type {
        "http" => match object.get_mut("headers") {
            Some(Value::Object(headers)) => headers
                .iter_mut()
                .filter(|(name, _)| SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
                .map(|(_, v)| v)
                .collect(),
            _ => Vec::new(),
        },
        "exec" => match object.get_mut("env") {
            Some(Value::Object(env)) => env.values_mut().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `payload` with every secret value replaced by [`REDACTED`].
pub fn redact(job_type: &str, payload: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(payload) else {
        return payload.to_vec();
    };
    let secrets = secret_values(job_type, &mut object);
    if secrets.is_empty() {
        return payload.to_vec();
    }
    for value in secrets {
        *value = Value::String(REDACTED.into());
    }
    serde_json::to_vec(&Value::Object(object)).unwrap_or_else(|_| payload.to_vec())
}

/// `update` with every secret value that reads [`REDACTED`] replaced by the
/// value at the same place in `stored` (dropped when `stored` has none).
pub fn restore(job_type: &str, update: &[u8], stored: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(update) else {
        return update.to_vec();
    };
    let mut stored_object = match serde_json::from_slice::<Value>(stored) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    let field = match job_type {
        "http" => "headers",
        "exec" => "env",
        _ => return update.to_vec(),
    };
    let stored_field = match stored_object.remove(field) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let redacted = Value::String(REDACTED.into());
    let Some(Value::Object(entries)) = object.get_mut(field) else {
        return update.to_vec();
    };
    if !entries.values().any(|v| *v == redacted) {
        return update.to_vec();
    }
    let names: Vec<String> = entries
        .iter()
        .filter(|(_, v)| **v == redacted)
        .map(|(k, _)| k.clone())
        .collect();
    for name in names {
        match stored_field.get(&name) {
            Some(value) => {
                entries.insert(name, value.clone());
            }
            None => {
                entries.remove(&name);
            }
        }
    }
    serde_json::to_vec(&Value::Object(object)).unwrap_or_else(|_| update.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn auth_headers_and_exec_env_values_are_redacted_and_nothing_else() {
        let http =
            br#"{"url":"https://x","headers":{"AUTHORIZATION":"Bearer s","cookie":"c","X-Trace":"t"}}"#;
        assert_eq!(
            json(&redact("http", http)),
            serde_json::json!({"url":"https://x","headers":{"AUTHORIZATION":"<redacted>","cookie":"<redacted>","X-Trace":"t"}})
        );
        let exec = br#"{"argv":["env"],"env":{"DB_PASSWORD":"p","MODE":"m"}}"#;
        assert_eq!(
            json(&redact("exec", exec)),
            serde_json::json!({"argv":["env"],"env":{"DB_PASSWORD":"<redacted>","MODE":"<redacted>"}})
        );
        let noop = br#"{"headers":{"Authorization":"x"}}"#;
        assert_eq!(redact("noop", noop), noop.to_vec());
        assert_eq!(redact("http", b"not json"), b"not json".to_vec());
    }

    #[test]
    fn a_redacted_value_written_back_keeps_the_stored_secret() {
        let stored = br#"{"url":"https://x","headers":{"Authorization":"Bearer s","X":"1"}}"#;
        let update =
            br#"{"url":"https://y","headers":{"Authorization":"<redacted>","X":"2","Cookie":"<redacted>"}}"#;
        assert_eq!(
            json(&restore("http", update, stored)),
            serde_json::json!({"url":"https://y","headers":{"Authorization":"Bearer s","X":"2"}})
        );
        let new_secret = br#"{"url":"https://y","headers":{"Authorization":"Bearer new"}}"#;
        assert_eq!(restore("http", new_secret, stored), new_secret.to_vec());
    }
}
