//! The protobuf descriptors of the API, as the REST gateway reads them.
//!
//! `build.rs` writes the descriptor set of every `.proto` it compiles (with
//! their imports, the well-known types among them) to
//! `$OUT_DIR/kairos_descriptor.bin`; this module embeds it and indexes its
//! messages and enums by full name (`kairos.v1.ScheduledJob`). Two readers:
//!
//! - the query and path parameters of a request ([`super::request`]): what
//!   type the field a parameter names has, so that `pageSize=10` becomes the
//!   JSON number the message's serde impl expects and `paused=yes` is
//!   refused naming the field;
//! - the OpenAPI document ([`super::openapi`]), whose schemas follow the
//!   proto3 JSON mapping of these messages.
//!
//! Names: a field is known by its proto name (`owner_service`) and its JSON
//! name (`ownerService`), as the JSON mapping accepts both on input; the
//! gateway and the document always write the JSON name.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};

/// The descriptor set `build.rs` wrote.
const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kairos_descriptor.bin"));

/// The package of the API's messages.
pub const PACKAGE: &str = "kairos.v1";

/// Messages and enums by full name (no leading dot), and the comments of
/// the API's messages and fields.
pub struct Descriptors {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
    /// Leading comments by full name: `kairos.v1.Run`, `kairos.v1.Run.id`.
    comments: HashMap<String, String>,
}

/// What a field holds, as the JSON mapping sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// int32, sint32, sfixed32: a JSON number.
    Int32,
    /// uint32, fixed32: a JSON number.
    UInt32,
    /// int64, sint64, sfixed64: a decimal string.
    Int64,
    /// uint64, fixed64: a decimal string.
    UInt64,
    /// float, double: a number, or "NaN", "Infinity", "-Infinity".
    Float,
    String,
    /// Base64.
    Bytes,
    /// The enum's full name; its value names.
    Enum(String),
    /// The message's full name.
    Message(String),
}

/// One field of a message.
#[derive(Clone, Debug)]
pub struct Field {
    /// The proto name (`owner_service`).
    pub name: String,
    /// The JSON name (`ownerService`).
    pub json_name: String,
    pub kind: Kind,
    pub repeated: bool,
    /// A `map<K, V>` field: the value's field (keys are strings in JSON).
    pub map_value: Option<Box<Field>>,
    /// Leading comment of the field in its `.proto`.
    pub comment: String,
}

/// The API's descriptors, decoded once.
pub fn descriptors() -> &'static Descriptors {
    static DESCRIPTORS: OnceLock<Descriptors> = OnceLock::new();
    DESCRIPTORS.get_or_init(|| {
        let set = FileDescriptorSet::decode(DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set");
        Descriptors::new(&set)
    })
}

impl Descriptors {
    fn new(set: &FileDescriptorSet) -> Descriptors {
        let mut d = Descriptors {
            messages: HashMap::new(),
            enums: HashMap::new(),
            comments: HashMap::new(),
        };
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                d.add_message(package, message);
            }
            for e in &file.enum_type {
                d.enums.insert(format!("{package}.{}", e.name()), e.clone());
            }
            d.add_comments(file);
        }
        d
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        self.messages.insert(name, message.clone());
    }

    /// Leading comments of top-level messages (path `[4, i]`), their
    /// fields (`[4, i, 2, j]`) and top-level enums (`[5, i]`).
    fn add_comments(&mut self, file: &prost_types::FileDescriptorProto) {
        let Some(info) = &file.source_code_info else {
            return;
        };
        let package = file.package();
        for location in &info.location {
            let comment = location.leading_comments().trim();
            if comment.is_empty() {
                continue;
            }
            let name = match location.path.as_slice() {
                [4, m] => file.message_type.get(*m as usize).map(|m| m.name().to_string()),
                [4, m, 2, f] => file.message_type.get(*m as usize).and_then(|m| {
                    m.field
                        .get(*f as usize)
                        .map(|f| format!("{}.{}", m.name(), f.name()))
                }),
                [5, e] => file.enum_type.get(*e as usize).map(|e| e.name().to_string()),
                _ => None,
            };
            if let Some(name) = name {
                let text = comment.lines().map(str::trim).collect::<Vec<_>>().join(" ");
                self.comments.insert(format!("{package}.{name}"), text);
            }
        }
    }

    /// The message `full_name` (`kairos.v1.Run`), if known.
    pub fn message(&self, full_name: &str) -> Option<&DescriptorProto> {
        self.messages.get(full_name)
    }

    /// The value names of enum `full_name`, in declaration order.
    pub fn enum_values(&self, full_name: &str) -> Vec<String> {
        self.enums
            .get(full_name)
            .map(|e| e.value.iter().map(|v| v.name().to_string()).collect())
            .unwrap_or_default()
    }

    /// The leading comment of a message, enum or field (`kairos.v1.Run.id`).
    pub fn comment(&self, full_name: &str) -> Option<&str> {
        self.comments.get(full_name).map(String::as_str)
    }

    /// The fields of message `full_name`, in declaration order.
    pub fn fields(&self, full_name: &str) -> Vec<Field> {
        let Some(message) = self.message(full_name) else {
            return Vec::new();
        };
        message.field.iter().map(|f| self.field(full_name, f)).collect()
    }

    /// The field of message `full_name` called `name` (proto or JSON name).
    pub fn field_named(&self, full_name: &str, name: &str) -> Option<Field> {
        let message = self.message(full_name)?;
        message
            .field
            .iter()
            .find(|f| f.name() == name || f.json_name() == name)
            .map(|f| self.field(full_name, f))
    }

    fn field(&self, message: &str, f: &FieldDescriptorProto) -> Field {
        let kind = kind(f);
        let map_value = match &kind {
            Kind::Message(entry) if self.is_map_entry(entry) => self
                .message(entry)
                .and_then(|m| m.field.iter().find(|v| v.number() == 2))
                .map(|v| Box::new(self.field(entry, v))),
            _ => None,
        };
        Field {
            name: f.name().to_string(),
            json_name: f.json_name().to_string(),
            repeated: f.label() == Label::Repeated && map_value.is_none(),
            kind,
            map_value,
            comment: self
                .comment(&format!("{message}.{}", f.name()))
                .unwrap_or_default()
                .to_string(),
        }
    }

    fn is_map_entry(&self, full_name: &str) -> bool {
        self.message(full_name)
            .and_then(|m| m.options.as_ref())
            .is_some_and(|o| o.map_entry())
    }
}

/// The JSON-mapping kind of a field's type.
fn kind(f: &FieldDescriptorProto) -> Kind {
    let type_name = || f.type_name().trim_start_matches('.').to_string();
    match f.r#type() {
        Type::Bool => Kind::Bool,
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => Kind::Int32,
        Type::Uint32 | Type::Fixed32 => Kind::UInt32,
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => Kind::Int64,
        Type::Uint64 | Type::Fixed64 => Kind::UInt64,
        Type::Float | Type::Double => Kind::Float,
        Type::String => Kind::String,
        Type::Bytes => Kind::Bytes,
        Type::Enum => Kind::Enum(type_name()),
        Type::Message | Type::Group => Kind::Message(type_name()),
    }
}

/// The field at dotted `path` of message `message`.
pub fn resolve(message: &str, path: &str) -> Field {
    let d = descriptors();
    let mut message = message.to_string();
    let mut field = None;
    for segment in path.split('.') {
        let f = d
            .field_named(&message, segment)
            .unwrap_or_else(|| panic!("{message} has no field {segment}"));
        if let Kind::Message(inner) = &f.kind {
            message = inner.clone();
        }
        field = Some(f);
    }
    field.expect("a non-empty path")
}

/// The short name of a full name: `Run` of `kairos.v1.Run`.
pub fn short_name(full_name: &str) -> &str {
    full_name.rsplit('.').next().unwrap_or(full_name)
}

/// A message of the API package by its short name: `kairos.v1.<name>`.
pub fn api_name(short: &str) -> String {
    format!("{PACKAGE}.{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_set_has_the_api_and_the_well_known_types() {
        let d = descriptors();
        assert!(d.message("kairos.v1.ScheduledJob").is_some());
        assert!(d.message("google.protobuf.Timestamp").is_some());
        let owner = d.field_named("kairos.v1.ScheduledJob", "owner_service").unwrap();
        assert_eq!(owner.json_name, "ownerService");
        assert_eq!(owner.kind, Kind::String);
        let labels = d.field_named("kairos.v1.Metadata", "labels").unwrap();
        assert!(!labels.repeated);
        assert_eq!(labels.map_value.unwrap().kind, Kind::String);
        let version = d.field_named("kairos.v1.ScheduledJob", "version").unwrap();
        assert_eq!(version.kind, Kind::UInt64);
        assert_eq!(
            d.enum_values("kairos.v1.JobStatus").first().map(String::as_str),
            Some("JOB_STATUS_UNSPECIFIED")
        );
        assert!(d.comment("kairos.v1.ScheduledJob.id").is_some());
    }
}
