//! Job types as data: the types external workers register, with the JSON
//! Schema every payload of the type must satisfy.
//!
//! A job's `type` names either a handler compiled into Kairos (`noop`,
//! `sleep`, `http`, `exec`) or a type some external worker registered
//! (`RegisterWorker`). Registered types live in the replicated state as
//! [`JobTypeDef`]s, so every node validates a create or update of a job of
//! the type the same way, and a type stays known when no worker serves it
//! for a while (its runs then wait, pending, for one).
//!
//! Rules a user sees (stated in the README too):
//! - A type name is 1 to [`MAX_TYPE_NAME`] bytes of `a-z`, `0-9`, `.`, `_`
//!   and `-`, starting with a letter or digit, and is not a built-in type's.
//! - A schema is a JSON Schema document (draft 2020-12 unless its `$schema`
//!   says otherwise) of at most [`MAX_SCHEMA_BYTES`]; references to other
//!   documents (`$ref` to a URL or a file) are refused, so validating never
//!   reaches the network. An empty schema accepts any payload.
//! - With a schema, a job's payload must be a JSON document that satisfies
//!   it; the refusal names the first failing JSON path (a JSON Pointer:
//!   `/amount`, or `/` for the whole payload).
//! - The last registration of a type wins: it replaces the description and
//!   schema. Jobs already stored are not re-validated.
//!
//! Everything here is a pure function of its inputs (schemas are compiled
//! from the stored text), so it may run on any node before proposing.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Longest job type name, bytes.
pub const MAX_TYPE_NAME: usize = 64;
/// Longest payload schema, bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Longest type description, bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most types one registration may declare.
pub const MAX_TYPES_PER_WORKER: usize = 64;

/// A job type registered by an external worker, as replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTypeDef {
    /// The type's name (what a job's `type` says).
    pub name: String,
    /// Free text.
    pub description: String,
    /// JSON Schema for payloads; empty: any payload.
    pub payload_schema: String,
    /// Who last registered it.
    pub registered_by: String,
    /// When it was last registered, Unix ms.
    pub updated_ms: i64,
}

/// Checks a type name an external worker declares; `builtin` tells whether
/// a name is a compiled-in handler's.
pub fn validate_type_name(name: &str, builtin: impl Fn(&str) -> bool) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("job type {name:?}: {why}")));
    if name.is_empty() {
        return Err(Error::InvalidArgument("job type: the name is empty".into()));
    }
    if name.len() > MAX_TYPE_NAME {
        return bad(&format!("longer than {MAX_TYPE_NAME} bytes"));
    }
    let first_ok = name.as_bytes()[0].is_ascii_lowercase() || name.as_bytes()[0].is_ascii_digit();
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok {
        return bad("use a-z, 0-9, '.', '_' and '-', starting with a letter or digit");
    }
    if builtin(name) {
        return bad("is a built-in job type and cannot be registered by a worker");
    }
    Ok(())
}

/// Checks a type a worker declares: its name, description and schema (which
/// must compile). `builtin` tells whether a name is a compiled-in handler's.
pub fn validate_type_spec(
    name: &str,
    description: &str,
    payload_schema: &str,
    builtin: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    validate_type_name(name, builtin)?;
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(Error::InvalidArgument(format!(
            "job type {name:?}: description longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    compile_schema(name, payload_schema).map(|_| ())
}

/// Compiles a type's payload schema; `None` for an empty one.
pub fn compile_schema(name: &str, payload_schema: &str) -> Result<Option<jsonschema::Validator>, Error> {
    let bad = |why: String| Error::InvalidArgument(format!("job type {name:?}: payload_schema: {why}"));
    if payload_schema.trim().is_empty() {
        return Ok(None);
    }
    if payload_schema.len() > MAX_SCHEMA_BYTES {
        return Err(bad(format!("longer than {MAX_SCHEMA_BYTES} bytes")));
    }
    let schema: serde_json::Value =
        serde_json::from_str(payload_schema).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(bad("a schema is a JSON object (or true/false)".into()));
    }
    jsonschema::validator_for(&schema)
        .map(Some)
        .map_err(|e| bad(format!("not a valid JSON Schema: {e}")))
}

/// Checks `payload` against the type's schema: `Err` names the first failing
/// JSON path, as `payload at /amount: "x" is not of type "integer"`.
pub fn validate_payload(def: &JobTypeDef, payload: &[u8]) -> Result<(), String> {
    let validator = match compile_schema(&def.name, &def.payload_schema) {
        Ok(Some(validator)) => validator,
        Ok(None) => return Ok(()),
        // A stored schema compiled when it was registered; a newer build
        // that cannot compile it refuses rather than skipping the check.
        Err(e) => return Err(e.to_string()),
    };
    let instance: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        format!(
            "payload: not JSON ({e}); job type {:?} has a schema, so its payload must be a JSON document",
            def.name
        )
    })?;
    let first_error = validator.iter_errors(&instance).next().map(|error| {
        let path = error.instance_path().as_str().to_string();
        let path = if path.is_empty() { "/".to_string() } else { path };
        format!("payload at {path}: {error} (schema of job type {:?})", def.name)
    });
    match first_error {
        None => Ok(()),
        Some(message) => Err(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(schema: &str) -> JobTypeDef {
        JobTypeDef {
            name: "billing.charge".into(),
            description: String::new(),
            payload_schema: schema.into(),
            registered_by: "w".into(),
            updated_ms: 0,
        }
    }

    const SCHEMA: &str = r#"{"type":"object","properties":{"amount":{"type":"integer","minimum":1},
        "items":{"type":"array","items":{"type":"string"}}},"required":["amount"],"additionalProperties":false}"#;

    #[test]
    fn names_are_checked() {
        let builtin = |n: &str| n == "http";
        assert!(validate_type_name("billing.charge-v2_x", builtin).is_ok());
        for (bad, says) in [
            ("", "empty"),
            ("Billing", "a-z"),
            ("-x", "starting"),
            ("a b", "a-z"),
            ("http", "built-in"),
        ] {
            let e = validate_type_name(bad, builtin).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(validate_type_name(&"a".repeat(65), builtin).is_err());
        assert!(validate_type_name(&"a".repeat(64), builtin).is_ok());
    }

    #[test]
    fn schemas_must_compile() {
        assert!(compile_schema("t", "").unwrap().is_none());
        assert!(compile_schema("t", SCHEMA).unwrap().is_some());
        for (bad, says) in [
            ("{", "not JSON"),
            ("[1]", "JSON object"),
            (r#"{"type": 12}"#, "not a valid JSON Schema"),
            (
                r#"{"$ref": "https://example.com/s.json"}"#,
                "not a valid JSON Schema",
            ),
        ] {
            let e = compile_schema("t", bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("payload_schema"), "{e}");
        }
    }

    #[test]
    fn payloads_are_validated_naming_the_path() {
        let def = def(SCHEMA);
        assert!(validate_payload(&def, br#"{"amount": 3, "items": ["a"]}"#).is_ok());
        let e = validate_payload(&def, br#"{"amount": 3, "items": ["a", 7]}"#).unwrap_err();
        assert!(e.starts_with("payload at /items/1:"), "{e}");
        let e = validate_payload(&def, br#"{"amount": "x"}"#).unwrap_err();
        assert!(e.starts_with("payload at /amount:"), "{e}");
        let e = validate_payload(&def, br#"{}"#).unwrap_err();
        assert!(e.starts_with("payload at /:") && e.contains("amount"), "{e}");
        let e = validate_payload(&def, b"not json").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        // No schema: anything goes.
        assert!(validate_payload(&self::def(""), b"\x00\xff").is_ok());
    }
}
