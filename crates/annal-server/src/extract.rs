//! What the HTTP API's handlers share, the consumer groups' routes among them: JSON errors
//! and answers, and extractors of bodies, query parameters and stream ids that refuse bad
//! input with a JSON error naming the problem.

use std::sync::Arc;

use annal_core::Error;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::json::ErrorJson;
use crate::State;

/// An error answered as JSON.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(crate::public(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = ErrorJson::from_error(&self.0);
        json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        )
    }
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub(crate) fn ok_json<T: serde::Serialize>(body: &T) -> Response {
    json_response(StatusCode::OK, body)
}

/// A JSON request body and its size in bytes, rejected with a JSON error naming the problem.
pub struct JsonBody<T>(pub T, pub usize);

impl<T: DeserializeOwned> FromRequest<Arc<State>> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<State>) -> Result<Self, Response> {
        let limit = body_limit(state);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if let Some(slow) = crate::budget::SlowBody::find(&e) {
                let mut r = json_response(
                    StatusCode::REQUEST_TIMEOUT,
                    &ErrorJson::new("timed_out", slow.to_string()),
                );
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError(Error::TooLarge {
                    what: "request body".into(),
                    size: declared.unwrap_or(limit + 1),
                    limit,
                })
                .into_response()
            } else {
                ApiError(Error::invalid("body", e.body_text())).into_response()
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        crate::json::object(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map(|v| JsonBody(v, bytes.len()))
            .map_err(|e| ApiError(Error::invalid("body", e.to_string())).into_response())
    }
}

/// Query parameters, rejected with a JSON error naming the problem.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        check_query(query)
            .and_then(|()| {
                serde_urlencoded::from_str(query)
                    .map_err(|e| Error::invalid("query", e.to_string()))
            })
            .map(Params)
            .map_err(ApiError)
    }
}

/// Refuses what the query parser would take leniently: a malformed %-escape (taken
/// literally), or escapes that do not make UTF-8 (replaced).
fn check_query(query: &str) -> Result<(), Error> {
    check_escapes(query, "query")?;
    for part in query.split(['&', '=']) {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map_err(|_| Error::invalid("query", "is not UTF-8"))?;
    }
    Ok(())
}

/// Refuses a `%` that is not followed by two hex digits, which decoders take literally.
fn check_escapes(text: &str, what: &str) -> Result<(), Error> {
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            let shown = String::from_utf8_lossy(&bytes[i..bytes.len().min(i + 3)]);
            return Err(Error::invalid(
                what,
                format!("has a malformed %-escape ('{shown}' at byte {i})"),
            ));
        }
    }
    Ok(())
}

/// The path's stream id, decoded.
pub struct StreamPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        check_escapes(parts.uri.path(), "path").map_err(ApiError)?;
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| StreamPath(p.0))
            .map_err(|e| ApiError(Error::invalid("stream id", e.body_text())))
    }
}

/// The largest HTTP request body: an append of the largest size, base64-encoded, with room
/// for its JSON.
pub(crate) fn body_limit(state: &State) -> usize {
    state
        .config
        .limits
        .max_append_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20)
}
