//! Shared internals of the built-in handlers: strict, field-naming payload
//! parsing ([`Fields`]), bounded output capture ([`TailBuf`]) and the
//! timeout rule ([`effective_timeout`]), and error-chain formatting.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::tail;

/// `min(timeout_ms, ctx_timeout)`: a payload may shorten, never extend, the attempt.
pub(crate) fn effective_timeout(ctx_timeout: Duration, timeout_ms: Option<u64>) -> Duration {
    timeout_ms.map_or(ctx_timeout, |ms| ctx_timeout.min(Duration::from_millis(ms)))
}

/// Upper bound for `ms`/`timeout_ms` payload fields: one day.
pub(crate) const MAX_PAYLOAD_MS: u64 = 86_400_000;

/// Rolling byte buffer that keeps roughly the last `cap` bytes of a stream.
pub(crate) struct TailBuf {
    /// Retained bytes; between `cap` and `2 * cap` long once full.
    buf: Vec<u8>,
    /// Bytes to report in the end.
    cap: usize,
}

impl TailBuf {
    /// An empty buffer reporting at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self { buf: Vec::new(), cap }
    }

    /// Appends `bytes`, dropping old ones (amortised: drains at `2 * cap`).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.cap {
            let excess = self.buf.len() - self.cap;
            self.buf.drain(..excess);
        }
    }

    /// The last `cap` bytes as lossy UTF-8, at most `cap` bytes long.
    pub(crate) fn to_string_lossy(&self) -> String {
        let start = self.buf.len().saturating_sub(self.cap);
        tail(&String::from_utf8_lossy(&self.buf[start..]), self.cap)
    }
}

/// A JSON-object payload whose fields are taken one by one, so every error names its field.
pub(crate) struct Fields {
    /// Fields not yet taken.
    map: Map<String, Value>,
}

impl Fields {
    /// Parses `payload` (empty = `{}`) as an object and rejects keys not in `known`.
    pub(crate) fn parse(payload: &[u8], known: &[&str]) -> Result<Fields, String> {
        let trimmed = payload.trim_ascii();
        let value: Value = if trimmed.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(trimmed).map_err(|e| format!("payload: invalid JSON: {e}"))?
        };
        let Value::Object(map) = value else {
            return Err("payload: must be a JSON object".to_string());
        };
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "payload.{k}: unknown field (expected one of: {})",
                known.join(", ")
            ));
        }
        Ok(Fields { map })
    }

    /// Takes optional field `key`; `null` counts as absent.
    pub(crate) fn take<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, String> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| format!("payload.{key}: {e}")),
        }
    }

    /// Takes required field `key`.
    pub(crate) fn require<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, String> {
        self.take(key)?.ok_or_else(|| format!("payload.{key}: required"))
    }

    /// Takes optional integer field `key`, checking it lies in `min..=max`.
    pub(crate) fn take_ms(&mut self, key: &str, min: u64, max: u64) -> Result<Option<u64>, String> {
        let range = || format!("payload.{key}: must be an integer between {min} and {max}");
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(range()),
            },
        }
    }
}

/// `err: cause: cause` — reqwest's Display hides the useful part in `source()`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tailbuf_keeps_last_bytes() {
        let mut b = TailBuf::new(4);
        for chunk in ["ab", "cdef", "ghijklmnop", "q"] {
            b.push(chunk.as_bytes());
        }
        assert_eq!(b.to_string_lossy(), "nopq");
        assert!(b.buf.len() <= 8);
    }

    #[test]
    fn effective_timeout_takes_minimum() {
        let ctx = Duration::from_secs(5);
        assert_eq!(effective_timeout(ctx, None), ctx);
        assert_eq!(effective_timeout(ctx, Some(100)), Duration::from_millis(100));
        assert_eq!(effective_timeout(ctx, Some(60_000)), ctx);
    }

    #[test]
    fn fields_errors_name_the_field() {
        let known = ["a", "b"];
        assert!(Fields::parse(b"", &known).is_ok());
        assert!(Fields::parse(b"  \n", &known).is_ok());
        let e = |p: &[u8]| Fields::parse(p, &known).err().unwrap();
        assert!(e(b"nope").starts_with("payload: invalid JSON"));
        assert_eq!(e(b"[1]"), "payload: must be a JSON object");
        assert!(e(br#"{"a":1,"zz":2}"#).starts_with("payload.zz: unknown field"));
        let mut f = Fields::parse(br#"{"a":"x","b":null}"#, &known).unwrap();
        assert!(f
            .take::<u64>("a")
            .unwrap_err()
            .starts_with("payload.a: invalid type"));
        assert_eq!(f.take::<u64>("b"), Ok(None));
        assert_eq!(f.require::<u64>("b"), Err("payload.b: required".into()));
    }
}
