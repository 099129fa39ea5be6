//! The OpenAPI 3.1 document of the REST API (`GET /openapi.json`),
//! generated from the code: its operations from the route table
//! ([`super::routes::ROUTES`], the table the router is built from), its
//! schemas from the protobuf descriptors ([`super::descriptor`]) following
//! the proto3 JSON mapping the gateway speaks:
//!
//! | proto | JSON Schema |
//! | --- | --- |
//! | `int64`, `uint64`, `(s)fixed64`, `sint64` | string, format `int64`, digits |
//! | `int32`, `uint32`, `(s)fixed32`, `sint32` | integer (bounded) |
//! | `float`, `double` | number, or `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `bool`, `string` | boolean, string |
//! | `bytes` | string, format `byte` (base64) |
//! | enum | string, one of the value names (a component) |
//! | `repeated T` | array of T |
//! | `map<K, V>` | object, `additionalProperties` V |
//! | message | `$ref` to its component (no unknown properties) |
//! | `Timestamp` | string, format `date-time` |
//! | `Duration` | string like `"1.5s"` |
//! | `FieldMask` | string, comma-separated paths |
//! | `Struct`, `Value`, `ListValue`, `Empty` | object, any, array, object |
//!
//! Only the messages and enums an operation reaches are components. A
//! field's leading comment in its `.proto` is its description. Every
//! operation documents its success reply and the error shape under every
//! HTTP code the gateway maps a gRPC code to ([`super::error`]); a stream
//! replies `text/event-stream`. Everything but `Bootstrap` needs a bearer
//! token (`bearerAuth`); `/openapi.json` itself, `/livez`, `/readyz` and
//! `/metrics` are not part of the API and are not listed.

use std::collections::{BTreeMap, BTreeSet};

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat,
    SchemaType, Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
};

use super::descriptor::{api_name, descriptors, resolve, short_name, Field, Kind};
use super::error::{http_code, status_name, ERROR_CODES};
use super::request::Body;
use super::routes::{self, Method, Route, ROUTES};

/// The name of the bearer token security scheme.
const BEARER: &str = "bearerAuth";
/// The error shape's component.
const ERROR_SCHEMA: &str = "Error";

/// The document.
pub fn document() -> OpenApi {
    let mut reached = Reached::default();
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        let (path, operation) = operation(route, &mut reached);
        paths = paths.path(path, PathItem::new(http_method(route.method), operation));
    }
    let mut components = ComponentsBuilder::new()
        .schema(ERROR_SCHEMA, error_schema())
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token's secret: `Authorization: Bearer <secret>`."))
                    .build(),
            ),
        );
    for (code, name) in error_responses() {
        components = components.response(name, error_response(code));
    }
    for (name, schema) in reached.schemas() {
        components = components.schema(name, schema);
    }
    let services: BTreeSet<&str> = ROUTES.iter().map(|r| r.service).collect();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Kairos")
                .version("v1")
                .description(Some(
                    "The REST/JSON form of Kairos's gRPC API: each operation calls one RPC \
                     (its operationId), with the same authentication, permissions, audit and answers. \
                     Messages use the proto3 JSON mapping. Errors are \
                     `{\"error\": {\"code\", \"status\", \"message\"}}`.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some([SecurityRequirement::new(BEARER, Vec::<String>::new())]))
        .tags(Some(services.into_iter().map(|s| {
            TagBuilder::new()
                .name(s)
                .description(Some(format!("kairos.v1.{s}")))
                .build()
        })))
        .build()
}

fn http_method(method: Method) -> HttpMethod {
    match method {
        Method::Get => HttpMethod::Get,
        Method::Post => HttpMethod::Post,
        Method::Patch => HttpMethod::Patch,
        Method::Delete => HttpMethod::Delete,
    }
}

/// The document's path of `route` (`{job.id}` → `{id}`) and its operation.
fn operation(route: &Route, reached: &mut Reached) -> (String, utoipa::openapi::path::Operation) {
    let d = descriptors();
    let request = api_name(route.request);
    let mut builder = OperationBuilder::new()
        .operation_id(Some(format!("{}.{}", route.service, route.rpc)))
        .tag(route.service)
        .summary(Some(route.summary))
        .description(Some(format!(
            "gRPC: `{}`. Needs: {}.",
            route.grpc_name(),
            match route.permission {
                "none" => "no credential".to_string(),
                "authenticated" => "any valid credential".to_string(),
                p => format!("`{p}`"),
            }
        )));
    // Path parameters.
    let path = route.public_path();
    let mut path_fields = Vec::new();
    for segment in route.path.split('/') {
        let Some(rest) = segment.strip_prefix('{') else {
            continue;
        };
        let (field_path, _verb) = rest.split_once('}').expect("a closed parameter");
        let field = resolve(&request, field_path);
        builder = builder.parameter(
            ParameterBuilder::new()
                .name(&field.json_name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(non_empty(&field.comment))
                .schema(Some(field_schema(&field, reached))),
        );
        path_fields.push(field_path.to_string());
    }
    // Query parameters: every field neither the path nor the body sets.
    if route.body != Body::Whole {
        let mut excluded: Vec<String> = path_fields;
        if let Body::Field(name) = route.body {
            excluded.push(name.to_string());
        }
        for (name, field) in query_fields(&request, "", "", &excluded) {
            let schema = field_schema(&field, reached);
            builder = builder.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(non_empty(&field.comment))
                    .schema(Some(schema)),
            );
        }
    }
    if matches!(route.kind, routes::Kind::Stream) {
        builder = builder.parameter(
            ParameterBuilder::new()
                .name("Last-Event-ID")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Resume after this event id (the `id:` of the last event received).",
                ))
                .schema(Some(string())),
        );
    }
    // Body.
    let body = match route.body {
        Body::None => None,
        Body::Whole => Some((
            reached.message_ref(&request),
            Required::False,
            "The request message.".to_string(),
        )),
        Body::Field(name) => {
            let field = d.field_named(&request, name).expect("the body field exists");
            Some((
                field_schema(&field, reached),
                Required::True,
                format!("The request's `{}`.", field.json_name),
            ))
        }
    };
    if let Some((schema, required, description)) = body {
        builder = builder.request_body(Some(
            RequestBodyBuilder::new()
                .description(Some(description))
                .required(Some(required))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(schema))
                        .example(body_example(route.rpc))
                        .build(),
                )
                .build(),
        ));
    }
    // Replies.
    let response = api_name(route.response);
    let ok = match route.kind {
        routes::Kind::Unary => ResponseBuilder::new()
            .description(format!("The `{}`.", route.response))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(reached.message_ref(&response)))
                    .build(),
            ),
        routes::Kind::Stream => {
            reached.message_ref(&response);
            ResponseBuilder::new()
                .description(format!(
                    "Server-Sent Events: each event's `data:` is one `{}` (JSON, see its schema) and its \
                     `id:` where to resume; an error after the stream started is a last event named \
                     `error` whose data is the error shape.",
                    route.response
                ))
                .content(
                    "text/event-stream",
                    ContentBuilder::new().schema(Some(string())).build(),
                )
        }
    };
    builder = builder.response("200", ok);
    for (code, name) in error_responses() {
        builder = builder.response(code.to_string(), Ref::from_response_name(name));
    }
    if route.permission == "none" {
        builder = builder.securities(Some(Vec::<SecurityRequirement>::new()));
    }
    (path, builder.build())
}

/// A valid body of some writes, built from the message types (so it is
/// their JSON mapping): what a reader copies, and what a fuzzer starts from.
fn body_example(rpc: &str) -> Option<serde_json::Value> {
    use crate::proto as pb;
    let value = match rpc {
        "CreateJob" => serde_json::to_value(pb::ScheduledJob {
            id: "example-job".into(),
            r#type: "noop".into(),
            owner_service: "examples".into(),
            schedule: "*/5 * * * *".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        }),
        "PublishEvent" => serde_json::to_value(pb::PublishEventRequest {
            topic: "examples.created".into(),
            attributes: [("region".to_string(), "eu".to_string())].into(),
            ..Default::default()
        }),
        "CreateRole" => serde_json::to_value(pb::Role {
            name: "example-reader".into(),
            permissions: vec!["job:read".into(), "run:read".into()],
            ..Default::default()
        }),
        "CreateToken" => serde_json::to_value(pb::CreateTokenRequest {
            name: "example-token".into(),
            roles: vec!["example-reader".into()],
            ..Default::default()
        }),
        _ => return None,
    };
    Some(value.expect("a message serializes"))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// The query parameters of `message`: its fields by dotted JSON name,
/// descending into message fields (not well-known types, maps or repeated
/// ones), leaving out the proto field paths in `excluded`.
fn query_fields(
    message: &str,
    proto_prefix: &str,
    json_prefix: &str,
    excluded: &[String],
) -> Vec<(String, Field)> {
    let mut out = Vec::new();
    for field in descriptors().fields(message) {
        let proto_path = format!("{proto_prefix}{}", field.name);
        let json_path = format!("{json_prefix}{}", field.json_name);
        if excluded.contains(&proto_path) || field.map_value.is_some() {
            continue;
        }
        match &field.kind {
            Kind::Message(inner) if !inner.starts_with("google.protobuf.") => {
                if !field.repeated {
                    out.extend(query_fields(
                        inner,
                        &format!("{proto_path}."),
                        &format!("{json_path}."),
                        excluded,
                    ));
                }
            }
            _ => out.push((json_path, field)),
        }
    }
    out
}

/// Components reached so far, by full name.
#[derive(Default)]
struct Reached {
    messages: BTreeSet<String>,
    enums: BTreeSet<String>,
}

impl Reached {
    /// A `$ref` to message `full_name`'s component (a well-known type inline).
    fn message_ref(&mut self, full_name: &str) -> RefOr<Schema> {
        if let Some(schema) = well_known(full_name) {
            return RefOr::T(schema);
        }
        self.messages.insert(full_name.to_string());
        RefOr::Ref(Ref::from_schema_name(short_name(full_name)))
    }

    fn enum_ref(&mut self, full_name: &str) -> RefOr<Schema> {
        self.enums.insert(full_name.to_string());
        RefOr::Ref(Ref::from_schema_name(short_name(full_name)))
    }

    /// Every reached component's schema, following the messages' fields.
    fn schemas(mut self) -> BTreeMap<String, RefOr<Schema>> {
        let mut out = BTreeMap::new();
        let mut done = BTreeSet::new();
        while let Some(name) = self.messages.iter().find(|m| !done.contains(*m)).cloned() {
            done.insert(name.clone());
            let schema = message_schema(&name, &mut self);
            out.insert(short_name(&name).to_string(), RefOr::T(schema));
        }
        let d = descriptors();
        for name in &self.enums {
            let schema = ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(d.enum_values(name)))
                .description(d.comment(name).map(str::to_string))
                .build();
            out.insert(short_name(name).to_string(), RefOr::T(Schema::Object(schema)));
        }
        out
    }
}

/// The schema of message `full_name`: its fields by JSON name, none required
/// (the mapping leaves out default values), nothing else.
fn message_schema(full_name: &str, reached: &mut Reached) -> Schema {
    let d = descriptors();
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(d.comment(full_name).map(str::to_string))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    for field in d.fields(full_name) {
        object = object.property(
            field.json_name.clone(),
            described(field_schema(&field, reached), &field),
        );
    }
    Schema::Object(object.build())
}

/// `schema` with the field's comment as its description.
fn described(schema: RefOr<Schema>, field: &Field) -> RefOr<Schema> {
    let Some(text) = non_empty(&field.comment) else {
        return schema;
    };
    match schema {
        RefOr::Ref(mut r) => {
            r.description = text;
            RefOr::Ref(r)
        }
        RefOr::T(Schema::Object(mut o)) => {
            o.description = Some(text);
            RefOr::T(Schema::Object(o))
        }
        RefOr::T(Schema::Array(mut a)) => {
            a.description = Some(text);
            RefOr::T(Schema::Array(a))
        }
        other => other,
    }
}

/// The schema of a field's value: repeated as an array, a map as an object.
fn field_schema(field: &Field, reached: &mut Reached) -> RefOr<Schema> {
    if let Some(value) = &field.map_value {
        let object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::RefOr(item_schema(value, reached))));
        return RefOr::T(Schema::Object(object.build()));
    }
    let item = item_schema(field, reached);
    if field.repeated {
        return RefOr::T(Schema::Array(ArrayBuilder::new().items(item).build()));
    }
    item
}

/// The schema of one value of a field (an element of a repeated one).
fn item_schema(field: &Field, reached: &mut Reached) -> RefOr<Schema> {
    let typed = |t: Type| ObjectBuilder::new().schema_type(t);
    let schema = match &field.kind {
        Kind::Bool => typed(Type::Boolean),
        Kind::Int32 => typed(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(i32::MIN))
            .maximum(Some(i32::MAX)),
        Kind::UInt32 => typed(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(u32::MAX)),
        Kind::Int64 => typed(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .pattern(Some("^-?[0-9]{1,19}$")),
        Kind::UInt64 => typed(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .pattern(Some("^[0-9]{1,20}$")),
        Kind::Float => return RefOr::T(float()),
        Kind::String => typed(Type::String),
        Kind::Bytes => typed(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte))),
        Kind::Enum(name) => return reached.enum_ref(name),
        Kind::Message(name) => return reached.message_ref(name),
    };
    RefOr::T(Schema::Object(schema.build()))
}

fn string() -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new().schema_type(Type::String).build(),
    ))
}

/// A float: a number, or one of the names the mapping gives the others.
fn float() -> Schema {
    Schema::AnyOf(
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some([
                "NaN",
                "Infinity",
                "-Infinity",
            ])))
            .build(),
    )
}

/// The JSON form of a well-known type, or `None` for another message.
fn well_known(full_name: &str) -> Option<Schema> {
    let typed = |t: Type| ObjectBuilder::new().schema_type(t);
    let schema = match full_name {
        "google.protobuf.Timestamp" => typed(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, e.g. 2024-05-01T12:00:00Z.")),
        "google.protobuf.Duration" => typed(Type::String)
            .pattern(Some("^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$"))
            .description(Some("Seconds with an `s` suffix, e.g. \"1.5s\".")),
        "google.protobuf.FieldMask" => typed(Type::String).description(Some("Comma-separated field paths.")),
        "google.protobuf.Struct" | "google.protobuf.Empty" => {
            typed(Type::Object).additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
        }
        "google.protobuf.Value" => ObjectBuilder::new().schema_type(SchemaType::AnyValue),
        "google.protobuf.ListValue" => {
            return Some(Schema::Array(
                ArrayBuilder::new()
                    .items(RefOr::T(Schema::Object(
                        ObjectBuilder::new().schema_type(SchemaType::AnyValue).build(),
                    )))
                    .build(),
            ))
        }
        "google.protobuf.BoolValue" => typed(Type::Boolean),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => typed(Type::Integer),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            typed(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => return Some(float()),
        "google.protobuf.StringValue" => typed(Type::String),
        "google.protobuf.BytesValue" => {
            typed(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
        }
        other if other.starts_with("google.protobuf.") => {
            ObjectBuilder::new().schema_type(SchemaType::AnyValue)
        }
        _ => return None,
    };
    Some(Schema::Object(schema.build()))
}

/// `{"error": {"code": 404, "status": "NOT_FOUND", "message": "..."}}`.
fn error_schema() -> Schema {
    let names: Vec<&str> = ERROR_CODES.iter().map(|c| status_name(*c)).collect();
    let inner = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .description(Some("The HTTP status code.")),
        )
        .required("code")
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names))
                .description(Some("The gRPC status code's name.")),
        )
        .required("status")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message");
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("error", inner)
            .required("error")
            .build(),
    )
}

/// The HTTP codes of errors, each with its response component's name.
fn error_responses() -> Vec<(u16, String)> {
    let codes: BTreeSet<u16> = ERROR_CODES.iter().map(|c| http_code(*c).as_u16()).collect();
    codes.into_iter().map(|c| (c, format!("Error{c}"))).collect()
}

/// The response component of HTTP code `code`: the error shape, and for
/// 503 the leader hint header.
fn error_response(code: u16) -> utoipa::openapi::response::Response {
    let statuses: Vec<&str> = ERROR_CODES
        .iter()
        .filter(|c| http_code(**c).as_u16() == code)
        .map(|c| status_name(*c))
        .collect();
    let mut response = ResponseBuilder::new()
        .description(format!("An error: {}.", statuses.join(", ")))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ERROR_SCHEMA)))
                .build(),
        );
    if code == 503 {
        response = response.header(
            crate::api::LEADER_HEADER,
            HeaderBuilder::new()
                .schema(Some(string()))
                .description(Some(
                    "The leader's client address, when the answering node knows it.",
                ))
                .build(),
        );
    }
    response.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_referenced_component() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let responses = doc["components"]["responses"].as_object().unwrap();
        // Every $ref resolves.
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = &part[..part.find('"').unwrap()];
            let resolved = if let Some(name) = target.strip_prefix("#/components/schemas/") {
                schemas.contains_key(name)
            } else if let Some(name) = target.strip_prefix("#/components/responses/") {
                responses.contains_key(name)
            } else {
                false
            };
            assert!(resolved, "unresolved {target}");
        }
        let job = &schemas["ScheduledJob"];
        assert_eq!(job["properties"]["version"]["type"], "string");
        assert_eq!(job["properties"]["version"]["format"], "int64");
        assert_eq!(job["properties"]["payload"]["format"], "byte");
        assert_eq!(
            job["properties"]["status"]["$ref"],
            "#/components/schemas/JobStatus"
        );
        assert_eq!(job["properties"]["createdAt"]["format"], "date-time");
        assert_eq!(job["additionalProperties"], false);
        assert_eq!(
            schemas["Metadata"]["properties"]["labels"]["additionalProperties"]["type"],
            "string"
        );
        assert_eq!(schemas["JobStatus"]["enum"][1], "JOB_STATUS_ACTIVE");
        assert_eq!(
            schemas["Policies"]["properties"]["catchupWindow"]["type"],
            "string"
        );
        assert_eq!(schemas["ListJobsResponse"]["properties"]["jobs"]["type"], "array");
        let list = &doc["paths"]["/v1/jobs"]["get"];
        let params: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            params,
            [
                "pageSize",
                "pageToken",
                "ownerService",
                "type",
                "status",
                "consistency"
            ]
        );
        let create = &doc["paths"]["/v1/jobs"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ScheduledJob"
        );
        assert_eq!(create["parameters"][0]["name"], "requestId");
        let update = &doc["paths"]["/v1/jobs/{id}"]["patch"];
        assert_eq!(update["parameters"][0]["in"], "path");
        assert_eq!(update["parameters"][1]["name"], "updateMask");
        let watch = &doc["paths"]["/v1/runs:watch"]["get"];
        let names: Vec<&str> = watch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["jobId", "after.revision", "after.runId", "Last-Event-ID"]);
        assert!(watch["responses"]["200"]["content"]["text/event-stream"].is_object());
        assert_eq!(
            doc["paths"]["/v1/acl:bootstrap"]["post"]["security"],
            serde_json::json!([])
        );
        assert_eq!(
            list["responses"]["404"]["$ref"],
            "#/components/responses/Error404"
        );
        assert!(responses["Error503"]["headers"]["x-kairos-leader"].is_object());
    }

    #[test]
    fn every_body_example_is_valid_for_its_schema() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut checked = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                let content = &operation["requestBody"]["content"]["application/json"];
                let Some(example) = content.get("example") else {
                    continue;
                };
                let root = serde_json::json!({"components": doc["components"], "allOf": [content["schema"]]});
                let validator = jsonschema::validator_for(&root).unwrap();
                assert!(
                    validator.is_valid(example),
                    "{}: {example}",
                    operation["operationId"]
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
    }
}
