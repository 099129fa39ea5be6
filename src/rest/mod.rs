//! The REST/JSON API: the gRPC services over HTTP/1.1 and JSON, on the
//! node's HTTP listener (`--http-addr`), with an OpenAPI 3.1 document.
//!
//! A gateway in process, not a second API. Each route ([`routes::ROUTES`])
//! names one RPC; a request is turned into that RPC's request message (path
//! parameters, query parameters and body, [`request`]), wrapped in a
//! `tonic::Request` that carries what the gRPC server would have put there
//! (the `authorization` and `traceparent` headers as metadata, the
//! caller's socket address as `TcpConnectInfo`), and handed to the very
//! service method the gRPC server calls, on the same [`Api`] value. So a
//! REST call is authenticated, authorized, validated, audited and answered
//! exactly as the same gRPC call; only the encoding differs:
//!
//! - messages are their proto3 JSON form (pbjson's serde impls: field names
//!   in lowerCamelCase, 64-bit integers as strings, enums by name, bytes
//!   in base64, timestamps in RFC 3339);
//! - errors are `{"error": {"code", "status", "message"}}` with the HTTP
//!   status of the gRPC code ([`error`]);
//! - server streams are Server-Sent Events: one `data:` line of JSON per
//!   message, with an `id:` a client resumes from (`Last-Event-ID`).
//!
//! The same table builds the router ([`router`]) and the OpenAPI document
//! served at `GET /openapi.json` ([`openapi`]), whose schemas are generated
//! from the protobuf descriptors ([`descriptor`]); a route cannot be served
//! without being documented, nor documented without being served.
//!
//! Routing: axum matches whole path segments only, so a custom method's
//! `/v1/jobs/{id}:pause` is served by the router's `/v1/jobs/{p0}`, and
//! the gateway picks the route whose `:verb` ends the segment (else the one
//! without a verb). An unknown route, or a known path with another
//! method, is `404 NOT_FOUND` in the error shape.
//!
//! Limits: a body may be at most [`MAX_API_MESSAGE_BYTES`], the gRPC
//! services' limit (larger: `RESOURCE_EXHAUSTED`, 429).
//!
//! IMPLEMENTATION CAVEATS: the HTTP listener is plain HTTP even when the
//! gRPC API runs TLS (`--tls-cert`): a bearer token sent over REST crosses
//! the network in the clear unless `--http-addr` is loopback or behind a
//! TLS-terminating proxy. Client certificates do not apply to REST.

pub mod descriptor;
pub mod error;
pub mod openapi;
pub mod request;
pub mod routes;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::TcpConnectInfo;
use tonic::Status;

pub use error::RestError;
use routes::{Kind, Method, Route, ROUTES};

use crate::api::auth::{AUTHORIZATION_HEADER, TRACEPARENT_HEADER};
use crate::api::{Api, MAX_API_MESSAGE_BYTES};

/// What a route's handler gets: the request message's JSON form and what
/// the `tonic::Request` carries besides.
pub struct CallInput {
    /// The request message, proto3 JSON.
    pub json: serde_json::Value,
    /// `authorization` and `traceparent`, from the HTTP headers.
    pub metadata: MetadataMap,
    /// The caller's socket address.
    pub remote: Option<SocketAddr>,
    /// `Last-Event-ID`, for a stream's resume.
    pub last_event_id: Option<String>,
}

impl CallInput {
    /// `message` as the gRPC server would hand it to the service.
    fn into_request<T>(self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata;
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: self.remote,
        });
        request
    }
}

/// Calls a unary RPC with the decoded request and answers its reply as JSON.
pub async fn unary<Req, Resp, F, Fut>(input: CallInput, call: F) -> Result<Response, RestError>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let message: Req = request::decode(input.json.clone())?;
    let reply = call(input.into_request(message)).await?;
    json_reply(reply.get_ref())
}

/// Calls a server-streaming RPC and answers its messages as Server-Sent
/// Events, each with the id `id_of` gives it; `resume` reads a
/// `Last-Event-ID` into the request. A refusal before the stream starts is
/// an ordinary error reply; an error after it is a last event named
/// `error` carrying the error shape.
pub async fn stream<Req, Item, S, F, Fut>(
    mut input: CallInput,
    resume: fn(&str, &mut serde_json::Value) -> Result<(), RestError>,
    id_of: fn(&Item) -> Option<String>,
    call: F,
) -> Result<Response, RestError>
where
    Req: DeserializeOwned,
    Item: Serialize + Send + 'static,
    S: Stream<Item = Result<Item, Status>> + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    if let Some(id) = input.last_event_id.take() {
        resume(&id, &mut input.json)?;
    }
    let message: Req = request::decode(input.json.clone())?;
    let messages = call(input.into_request(message)).await?.into_inner();
    let events = messages
        .scan(false, move |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            let event = match item {
                Ok(item) => match serde_json::to_string(&item) {
                    Ok(data) => {
                        let event = Event::default().data(data);
                        match id_of(&item) {
                            Some(id) => event.id(id),
                            None => event,
                        }
                    }
                    Err(e) => {
                        *ended = true;
                        error_event(RestError::from(Status::internal(format!(
                            "encode a message: {e}"
                        ))))
                    }
                },
                Err(status) => {
                    *ended = true;
                    error_event(RestError::from(status))
                }
            };
            futures::future::ready(Some(Ok::<_, Infallible>(event)))
        })
        .boxed();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

fn error_event(error: RestError) -> Event {
    Event::default().event("error").data(error.body().to_string())
}

/// A reply message as a `200 OK` JSON body.
fn json_reply<T: Serialize>(message: &T) -> Result<Response, RestError> {
    let body = serde_json::to_vec(message)
        .map_err(|e| RestError::from(Status::internal(format!("encode the reply: {e}"))))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

/// The router of every REST route, answering through `api`.
pub fn router(api: Api) -> Router {
    let dispatch: Dispatch = Arc::new(move |route, params, request| {
        let api = api.clone();
        let span = server_span(route, &request);
        Box::pin(
            async move {
                // The same bound as the gRPC server's (`--max-requests`),
                // held until the answer is ready (a stream's body is not).
                let path = format!("/kairos.v1.{}/{}", route.service, route.rpc);
                let slot = match crate::api::limits::counts_as_request(&path) {
                    true => api.take_request_slot().map(Some),
                    false => Ok(None),
                };
                let response = match slot {
                    Err(refused) => RestError::from(refused).into_response(),
                    Ok(_slot) => match call(api, route, params, request).await {
                        Ok(response) => response,
                        Err(error) => error.into_response(),
                    },
                };
                tracing::Span::current().record("http.response.status_code", response.status().as_u16());
                response
            }
            .instrument(span),
        )
    });
    build_router(dispatch)
}

/// The server span of a REST call (a disabled span when it is not traced):
/// named `METHOD /route/template`, continuing the caller's `traceparent`.
fn server_span(route: &'static Route, request: &axum::extract::Request) -> tracing::Span {
    let Some(parent) = crate::telemetry::admit(request.headers()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: None,
        "kairos.api",
        otel.name = %format_args!("{} {}", request.method(), route.path),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route.path,
        rpc.service = route.service,
        rpc.method = route.rpc,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_from(&span, parent);
    span
}

/// Answers one matched route: `params` are the path parameters by field path.
type Dispatch = Arc<
    dyn Fn(&'static Route, Vec<(String, String)>, axum::extract::Request) -> BoxFuture<'static, Response>
        + Send
        + Sync,
>;

/// How the router serves one route's path: axum's form of it (`{pN}` per
/// parameter, the `:verb` left out) and, per parameter, its field path.
struct Template {
    axum_path: String,
    fields: Vec<String>,
    /// The `:verb` after the last parameter, if any.
    verb: Option<String>,
}

fn template(path: &str) -> Template {
    let mut fields = Vec::new();
    let mut verb = None;
    let segments: Vec<String> = path
        .split('/')
        .map(|segment| {
            let Some(rest) = segment.strip_prefix('{') else {
                return segment.to_string();
            };
            let (field, after) = rest.split_once('}').expect("a route parameter is closed by `}`");
            if let Some(v) = after.strip_prefix(':') {
                verb = Some(v.to_string());
            } else {
                assert!(after.is_empty(), "only `:verb` may follow a parameter: {path}");
            }
            fields.push(field.to_string());
            format!("{{p{}}}", fields.len() - 1)
        })
        .collect();
    Template {
        axum_path: segments.join("/"),
        fields,
        verb,
    }
}

/// Builds the router of [`ROUTES`], each matched route answered by `dispatch`.
fn build_router(dispatch: Dispatch) -> Router {
    let mut by_path: BTreeMap<String, Vec<&'static Route>> = BTreeMap::new();
    for route in ROUTES {
        by_path
            .entry(template(route.path).axum_path)
            .or_default()
            .push(route);
    }
    let mut router = Router::new();
    for (axum_path, routes) in by_path {
        let mut methods: MethodRouter = MethodRouter::new().fallback(not_found);
        let mut seen: Vec<Method> = routes.iter().map(|r| r.method).collect();
        seen.sort();
        seen.dedup();
        for method in seen {
            let candidates: Vec<&'static Route> =
                routes.iter().copied().filter(|r| r.method == method).collect();
            let dispatch = dispatch.clone();
            let handler = move |path: Result<Path<Vec<(String, String)>>, PathRejection>,
                                request: axum::extract::Request| {
                let dispatch = dispatch.clone();
                let candidates = candidates.clone();
                async move {
                    let raw = match path_values(path) {
                        Ok(raw) => raw,
                        Err(error) => return error.into_response(),
                    };
                    match select(&candidates, raw) {
                        Some((route, params)) => dispatch(route, params, request).await,
                        None => not_found(request).await.into_response(),
                    }
                }
            };
            methods = methods.merge(on(method_filter(method), handler));
        }
        router = router.route(&axum_path, methods);
    }
    router
}

fn method_filter(method: Method) -> MethodFilter {
    match method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Patch => MethodFilter::PATCH,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// The raw path parameters in order (percent-decoded), `p0`, `p1`, ...
fn path_values(path: Result<Path<Vec<(String, String)>>, PathRejection>) -> Result<Vec<String>, RestError> {
    let values = match path {
        Ok(Path(values)) => values,
        Err(PathRejection::MissingPathParams(_)) => Vec::new(),
        Err(e) => return Err(RestError::invalid(format!("path: {}", e.body_text()))),
    };
    let mut values: Vec<(usize, String)> = values
        .into_iter()
        .filter_map(|(name, value)| Some((name.strip_prefix('p')?.parse().ok()?, value)))
        .collect();
    values.sort();
    Ok(values.into_iter().map(|(_, v)| v).collect())
}

/// The route among `candidates` (one path, one method) the last parameter's
/// `:verb` picks (else the one without a verb), and its parameters by
/// field path.
fn select(
    candidates: &[&'static Route],
    raw: Vec<String>,
) -> Option<(&'static Route, Vec<(String, String)>)> {
    let with_verb = candidates.iter().find_map(|route| {
        let t = template(route.path);
        let verb = t.verb.as_ref()?;
        let last = raw.last()?;
        let value = last.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        let mut values = raw.clone();
        *values.last_mut()? = value.to_string();
        Some((*route, t.fields.into_iter().zip(values).collect()))
    });
    // Where this method has verbs, a value with a `:` asks for one (no job
    // or run id has a `:`); elsewhere (a role name) it is just a value.
    let has_verbs = candidates.iter().any(|r| template(r.path).verb.is_some());
    if with_verb.is_some() || (has_verbs && raw.last().is_some_and(|v| v.contains(':'))) {
        return with_verb;
    }
    with_verb.or_else(|| {
        candidates.iter().find_map(|route| {
            let t = template(route.path);
            t.verb
                .is_none()
                .then(|| (*route, t.fields.into_iter().zip(raw.clone()).collect()))
        })
    })
}

async fn not_found(request: axum::extract::Request) -> RestError {
    RestError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// Answers `route` through `api`.
async fn call(
    api: Api,
    route: &'static Route,
    params: Vec<(String, String)>,
    request: axum::extract::Request,
) -> Result<Response, RestError> {
    let (parts, body) = request.into_parts();
    let query = match parts.uri.query() {
        None => Vec::new(),
        Some(_) => {
            Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
                .map_err(|e| RestError::invalid(format!("query string: {e}")))?
                .0
        }
    };
    let body = axum::body::to_bytes(body, MAX_API_MESSAGE_BYTES)
        .await
        .map_err(|_| {
            RestError::from(Status::resource_exhausted(format!(
                "the request body is larger than {MAX_API_MESSAGE_BYTES} bytes, or was cut short"
            )))
        })?;
    let message = descriptor::api_name(route.request);
    let json = request::request_json(&message, route.body, &params, &query, &body)?;
    let input = CallInput {
        json,
        metadata: metadata(&parts.headers),
        remote: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
        last_event_id: match route.kind {
            Kind::Stream => parts
                .headers
                .get("last-event-id")
                .map(|v| v.to_str().map(str::to_string))
                .transpose()
                .map_err(|_| RestError::invalid("Last-Event-ID is not text"))?,
            Kind::Unary => None,
        },
    };
    (route.handler)(api, input).await
}

/// The gRPC metadata a REST call carries: its credential and trace context.
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for name in [AUTHORIZATION_HEADER, TRACEPARENT_HEADER] {
        if let Some(value) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| MetadataValue::try_from(v).ok())
        {
            metadata.insert(name, value);
        }
    }
    metadata
}

/// The answer to a path no route serves.
pub async fn fallback(request: axum::extract::Request) -> Response {
    not_found(request).await.into_response()
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    /// A router whose every route answers with its gRPC name and parameters.
    fn echo_router() -> Router {
        let dispatch: Dispatch = Arc::new(|route, params, _request| {
            Box::pin(async move {
                let body = serde_json::json!({"rpc": route.grpc_name(), "params": params});
                axum::Json(body).into_response()
            })
        });
        build_router(dispatch).fallback(fallback)
    }

    async fn send(router: &Router, method: &str, path: &str) -> (u16, serde_json::Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_document_lists_exactly_the_routes_the_router_serves() {
        let router = echo_router();
        let document = serde_json::to_value(openapi::document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                if !["get", "post", "patch", "delete", "put"].contains(&method.as_str()) {
                    continue;
                }
                operations += 1;
                // Every parameter a value that is a valid id and run id.
                let concrete = path
                    .split('/')
                    .map(|s| match s.find('}') {
                        Some(end) if s.starts_with('{') => format!("7{}", &s[end + 1..]),
                        _ => s.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let (status, body) = send(&router, &method.to_uppercase(), &concrete).await;
                assert_eq!(status, 200, "{method} {concrete}: {body}");
                let expected = operation["operationId"].as_str().unwrap();
                assert_eq!(
                    body["rpc"],
                    format!("kairos.v1.{}", expected.replace('.', "/")),
                    "{method} {path}"
                );
            }
        }
        assert_eq!(operations, ROUTES.len(), "one documented operation per route");
    }

    #[tokio::test]
    async fn a_verb_picks_its_route_and_unknown_routes_are_404_in_the_error_shape() {
        let router = echo_router();
        let (_, body) = send(&router, "POST", "/v1/jobs/a.b-c:pause").await;
        assert_eq!(body["rpc"], "kairos.v1.JobService/PauseJob");
        assert_eq!(body["params"], serde_json::json!([["id", "a.b-c"]]));
        let (_, body) = send(&router, "GET", "/v1/jobs/a:describe").await;
        assert_eq!(body["rpc"], "kairos.v1.RunService/DescribeJob");
        let (_, body) = send(&router, "GET", "/v1/jobs/a").await;
        assert_eq!(body["rpc"], "kairos.v1.JobService/GetJob");
        let (_, body) = send(&router, "GET", "/v1/acl/roles/team:billing").await;
        assert_eq!(body["params"], serde_json::json!([["name", "team:billing"]]));
        let (_, body) = send(&router, "PATCH", "/v1/jobs/a").await;
        assert_eq!(body["params"], serde_json::json!([["job.id", "a"]]));
        for (method, path) in [
            ("GET", "/v1/nothing"),
            ("POST", "/v1/jobs/a:explode"),
            ("PUT", "/v1/jobs/a"),
            ("GET", "/v1/jobs/a:pause"),
        ] {
            let (status, body) = send(&router, method, path).await;
            assert_eq!(status, 404, "{method} {path}");
            assert_eq!(body["error"]["status"], "NOT_FOUND", "{method} {path}");
            assert_eq!(body["error"]["code"], 404);
        }
    }

    #[test]
    fn every_route_names_real_messages_and_body_fields() {
        let d = descriptor::descriptors();
        for route in ROUTES {
            for name in [route.request, route.response] {
                assert!(
                    d.message(&descriptor::api_name(name)).is_some(),
                    "{}: {name}",
                    route.path
                );
            }
            if let request::Body::Field(field) = route.body {
                assert!(
                    d.field_named(&descriptor::api_name(route.request), field)
                        .is_some(),
                    "{}: {field}",
                    route.path
                );
            }
            let t = template(route.path);
            for field in &t.fields {
                let mut message = descriptor::api_name(route.request);
                for segment in field.split('.') {
                    let f = d
                        .field_named(&message, segment)
                        .unwrap_or_else(|| panic!("{}: {field}", route.path));
                    if let descriptor::Kind::Message(inner) = f.kind {
                        message = inner;
                    }
                }
            }
        }
    }
}
