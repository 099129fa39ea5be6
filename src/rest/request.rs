//! From an HTTP request to the RPC's request message.
//!
//! A route names the request message and where its fields come from
//! ([`Body`]); the gateway assembles the message's proto3 JSON form from
//! three places, then lets the message's own serde impl (pbjson) read it:
//!
//! 1. the body: the whole message (`Body::Whole`), one field of it
//!    (`Body::Field`, e.g. the `job` of `CreateJobRequest`), or nothing
//!    (`Body::None`: an empty body or `{}`);
//! 2. the path's parameters (`/v1/jobs/{id}`), which win over the body;
//! 3. the query string, for the fields neither sets: `?pageSize=10`,
//!    `?after.revision=7` for a field of a message field, a repeated field
//!    by repeating the parameter (`?kinds=A&kinds=B`), a `FieldMask` as
//!    comma-separated paths (`?updateMask=schedule,paused`).
//!
//! A parameter is known by its field's proto or JSON name and converted by
//! the field's type from the descriptors ([`super::descriptor`]), so a
//! malformed value is refused naming the parameter before any handler runs;
//! so are an unknown parameter, a body that is not JSON and a body field
//! of the wrong type (named by its JSON path, e.g. `job.policies.retry`).
//! Every such refusal is `INVALID_ARGUMENT`, never a server error.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::descriptor::{descriptors, Field, Kind};
use super::error::RestError;

/// Where the request message's fields come from, besides the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body (an empty one or `{}`); every field from the path or query.
    None,
    /// The body is the whole request message; no query parameters.
    Whole,
    /// The body is this field of the request message (proto name); the
    /// other fields come from the path or query.
    Field(&'static str),
}

/// The JSON form of a request message `message` (full name) from the
/// route's `body` rule, the path's `(field path, value)` pairs, the query
/// pairs and the raw body.
pub fn request_json(
    message: &str,
    body_rule: Body,
    path: &[(String, String)],
    query: &[(String, String)],
    body: &[u8],
) -> Result<Value, RestError> {
    let mut root = match body_rule {
        Body::None => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                match parse_body(body)? {
                    Value::Object(map) if map.is_empty() => {}
                    _ => return Err(RestError::invalid("this method takes no request body")),
                }
            }
            Map::new()
        }
        Body::Whole => match parse_body_or_empty(body)? {
            Value::Object(map) => map,
            _ => return Err(RestError::invalid("the request body must be a JSON object")),
        },
        Body::Field(name) => {
            let field = descriptors()
                .field_named(message, name)
                .unwrap_or_else(|| panic!("route body field {name} is not a field of {message}"));
            let mut map = Map::new();
            map.insert(field.json_name, parse_body(body)?);
            map
        }
    };
    for (field_path, value) in path {
        set_param(&mut root, message, field_path, value, Source::Path)?;
    }
    let taken: Vec<&str> = path
        .iter()
        .map(|(p, _)| p.as_str())
        .chain(match body_rule {
            Body::Field(name) => Some(name),
            _ => None,
        })
        .collect();
    for (key, value) in query {
        if body_rule == Body::Whole {
            return Err(RestError::invalid(format!(
                "unknown query parameter `{key}`: this method takes its fields in the body"
            )));
        }
        let first = key.split('.').next().unwrap_or_default();
        let first_name = descriptors()
            .field_named(message, first)
            .map(|f| f.name)
            .unwrap_or_default();
        if taken
            .iter()
            .any(|t| t.split('.').next() == Some(first_name.as_str()))
        {
            return Err(RestError::invalid(format!(
                "query parameter `{key}` sets a field the path or body sets"
            )));
        }
        set_param(&mut root, message, key, value, Source::Query)?;
    }
    Ok(Value::Object(root))
}

/// Reads `json` as the request message, naming the field a mismatch is at.
pub fn decode<T: DeserializeOwned>(json: Value) -> Result<T, RestError> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            RestError::invalid(format!("invalid request: {inner}"))
        } else {
            RestError::invalid(format!("invalid `{path}`: {inner}"))
        }
    })
}

fn parse_body(body: &[u8]) -> Result<Value, RestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RestError::invalid("the request body is missing"));
    }
    serde_json::from_slice(body)
        .map_err(|e| RestError::invalid(format!("the request body is not valid JSON: {e}")))
}

fn parse_body_or_empty(body: &[u8]) -> Result<Value, RestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    parse_body(body)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Path,
    Query,
}

impl Source {
    fn noun(self) -> &'static str {
        match self {
            Source::Path => "path parameter",
            Source::Query => "query parameter",
        }
    }
}

/// Sets the field `key` (a dotted path of proto or JSON names) of the
/// message `message` in `root` from the text `value`.
fn set_param(
    root: &mut Map<String, Value>,
    message: &str,
    key: &str,
    value: &str,
    source: Source,
) -> Result<(), RestError> {
    let noun = source.noun();
    let unknown = || RestError::invalid(format!("unknown {noun} `{key}`"));
    let segments: Vec<&str> = key.split('.').collect();
    let mut object = root;
    let mut message = message.to_string();
    for (i, segment) in segments.iter().enumerate() {
        let field = descriptors().field_named(&message, segment).ok_or_else(unknown)?;
        let last = i + 1 == segments.len();
        if !last {
            let Kind::Message(inner) = &field.kind else {
                return Err(unknown());
            };
            if field.repeated || field.map_value.is_some() || is_well_known(inner) {
                return Err(unknown());
            }
            let slot = object
                .entry(field.json_name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = slot else {
                return Err(RestError::invalid(format!(
                    "{noun} `{key}` conflicts with the body"
                )));
            };
            message = inner.clone();
            object = next;
            continue;
        }
        let converted =
            convert(&field, value).map_err(|why| RestError::invalid(format!("{noun} `{key}`: {why}")))?;
        if field.repeated {
            let slot = object
                .entry(field.json_name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            match slot {
                Value::Array(items) => items.push(converted),
                _ => {
                    return Err(RestError::invalid(format!(
                        "{noun} `{key}` conflicts with the body"
                    )))
                }
            }
        } else if source == Source::Query && object.contains_key(&field.json_name) {
            return Err(RestError::invalid(format!(
                "{noun} `{key}` is given more than once"
            )));
        } else {
            object.insert(field.json_name.clone(), converted);
        }
    }
    Ok(())
}

/// The well-known types a parameter can give as one value.
fn is_well_known(full_name: &str) -> bool {
    full_name.starts_with("google.protobuf.")
}

/// The JSON value of one parameter for `field`, or why it is malformed.
fn convert(field: &Field, text: &str) -> Result<Value, String> {
    if field.map_value.is_some() {
        return Err("a map cannot be given as a parameter".into());
    }
    scalar(&field.kind, text)
}

fn scalar(kind: &Kind, text: &str) -> Result<Value, String> {
    let integer = |min: i128, max: i128| -> Result<i128, String> {
        text.trim()
            .parse::<i128>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("expected an integer in [{min}, {max}], got {text:?}"))
    };
    Ok(match kind {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("expected true or false, got {text:?}")),
        },
        Kind::Int32 => Value::from(integer(i32::MIN.into(), i32::MAX.into())? as i64),
        Kind::UInt32 => Value::from(integer(0, u32::MAX.into())? as i64),
        // The JSON mapping writes 64-bit integers as strings.
        Kind::Int64 => Value::String(integer(i64::MIN.into(), i64::MAX.into())?.to_string()),
        Kind::UInt64 => Value::String(integer(0, u64::MAX.into())?.to_string()),
        Kind::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.to_string()),
            _ => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("expected a number, got {text:?}"))?,
        },
        Kind::String | Kind::Bytes => Value::String(text.to_string()),
        Kind::Enum(name) => {
            let values = descriptors().enum_values(name);
            if values.iter().any(|v| v == text) {
                Value::String(text.to_string())
            } else {
                return Err(format!("expected one of {}, got {text:?}", values.join(", ")));
            }
        }
        Kind::Message(name) => well_known(name, text)?,
    })
}

/// A well-known message type given as one parameter.
fn well_known(name: &str, text: &str) -> Result<Value, String> {
    Ok(match name {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => Value::String(text.to_string()),
        // pbjson reads a FieldMask as `{"paths": [...]}`; the parameter is
        // the canonical comma-separated form, in either case of names.
        "google.protobuf.FieldMask" => {
            let paths: Vec<Value> = text
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(snake_case(p)))
                .collect();
            serde_json::json!({ "paths": paths })
        }
        "google.protobuf.BoolValue" => scalar(&Kind::Bool, text)?,
        "google.protobuf.Int32Value" => scalar(&Kind::Int32, text)?,
        "google.protobuf.UInt32Value" => scalar(&Kind::UInt32, text)?,
        "google.protobuf.Int64Value" => scalar(&Kind::Int64, text)?,
        "google.protobuf.UInt64Value" => scalar(&Kind::UInt64, text)?,
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => scalar(&Kind::Float, text)?,
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => Value::String(text.to_string()),
        _ => {
            return Err(
                "a message cannot be given as one parameter: give its fields as `<name>.<field>`".into(),
            )
        }
    })
}

/// `ownerService` → `owner_service` (a name already in snake case is kept).
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto as pb;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_parameters_become_typed_fields() {
        let json = request_json(
            "kairos.v1.ListJobsRequest",
            Body::None,
            &[],
            &pairs(&[
                ("pageSize", "10"),
                ("owner_service", "billing"),
                ("status", "JOB_STATUS_PAUSED"),
            ]),
            b"",
        )
        .unwrap();
        let request: pb::ListJobsRequest = decode(json).unwrap();
        assert_eq!(request.page_size, 10);
        assert_eq!(request.owner_service, "billing");
        assert_eq!(request.status, pb::JobStatus::Paused as i32);
    }

    #[test]
    fn nested_repeated_and_mask_parameters() {
        let json = request_json(
            "kairos.v1.WatchRunsRequest",
            Body::None,
            &[],
            &pairs(&[("after.revision", "7"), ("after.runId", "3"), ("jobId", "a")]),
            b"",
        )
        .unwrap();
        let request: pb::WatchRunsRequest = decode(json).unwrap();
        assert_eq!(
            request.after,
            Some(pb::WatchPosition {
                revision: 7,
                run_id: 3
            })
        );

        let json = request_json(
            "kairos.v1.UpdateJobRequest",
            Body::Field("job"),
            &pairs(&[("job.id", "a")]),
            &pairs(&[("updateMask", "ownerService,paused")]),
            br#"{"paused": true}"#,
        )
        .unwrap();
        let request: pb::UpdateJobRequest = decode(json).unwrap();
        assert_eq!(
            request.update_mask.unwrap().paths,
            vec!["owner_service", "paused"]
        );
        let job = request.job.unwrap();
        assert_eq!((job.id.as_str(), job.paused), ("a", true));
    }

    #[test]
    fn the_path_wins_over_the_body() {
        let json = request_json(
            "kairos.v1.BackfillJobRequest",
            Body::Whole,
            &pairs(&[("id", "from-path")]),
            &[],
            br#"{"id": "from-body", "dryRun": true}"#,
        )
        .unwrap();
        let request: pb::BackfillJobRequest = decode(json).unwrap();
        assert_eq!(request.id, "from-path");
        assert!(request.dry_run);
    }

    #[test]
    fn malformed_input_is_refused_naming_the_field() {
        let refusal = |query: &[(&str, &str)], body: &[u8], rule: Body, message: &str| {
            let error = request_json(message, rule, &[], &pairs(query), body)
                .and_then(|json| match message {
                    "kairos.v1.CreateJobRequest" => decode::<pb::CreateJobRequest>(json).map(|_| ()),
                    _ => decode::<pb::ListJobsRequest>(json).map(|_| ()),
                })
                .unwrap_err();
            assert_eq!(error.code, tonic::Code::InvalidArgument);
            error.message
        };
        let list = "kairos.v1.ListJobsRequest";
        assert!(refusal(&[("pageSize", "ten")], b"", Body::None, list).contains("pageSize"));
        assert!(refusal(&[("pageSize", "-1")], b"", Body::None, list).contains("pageSize"));
        assert!(refusal(&[("status", "BOGUS")], b"", Body::None, list).contains("JOB_STATUS_ACTIVE"));
        assert!(refusal(&[("nope", "1")], b"", Body::None, list).contains("unknown query parameter `nope`"));
        assert!(refusal(&[], b"{\"x\": 1}", Body::None, list).contains("no request body"));
        let create = "kairos.v1.CreateJobRequest";
        assert!(refusal(&[], b"{not json", Body::Field("job"), create).contains("not valid JSON"));
        assert!(refusal(&[], b"", Body::Field("job"), create).contains("missing"));
        let message = refusal(
            &[],
            br#"{"policies": {"maxCatchup": "x"}}"#,
            Body::Field("job"),
            create,
        );
        assert!(message.contains("job.policies.maxCatchup"), "{message}");
        let message = refusal(&[("job.id", "a")], b"{}", Body::Field("job"), create);
        assert!(
            message.contains("sets a field the path or body sets"),
            "{message}"
        );
    }
}
