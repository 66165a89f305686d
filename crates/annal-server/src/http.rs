//! The HTTP side of the port: the JSON API under `/v1`, Server-Sent Events for
//! subscriptions, `/metrics`, `/health`, `/ready` and `/openapi.json`, with the gRPC service
//! routed beside them and one authentication layer in front of both.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/streams/{stream_id}` | append to one stream |
//! | `POST /v1/append` | append to several streams atomically, with an optional DCB condition |
//! | `GET /v1/streams/{stream_id}` | stream info (404 when the stream has no event) |
//! | `GET /v1/streams/{stream_id}/events` | read a stream |
//! | `GET /v1/events` | read the log, a category, event types or tags |
//! | `POST /v1/read` | read with any source, including OR queries |
//! | `GET /v1/streams`, `GET /v1/categories` | listings, paged by `after` |
//! | `GET /v1/position-at?time=` | the head of the log at an instant |
//! | `GET /v1/info` | version, head, limits |
//! | `GET`/`POST /v1/subscribe` | a subscription as Server-Sent Events |
//!
//! Reads stream their body (`{"events":[...],"head":H,"next":N}`) batch by batch; they return 1000
//! events unless `limit` says otherwise, and `next` is the `from` of the next page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use annal_core::{
    Direction, Error, ListCategories, ListStreams, Query, QueryItem, ReadRequest, Source,
    SubscribeFrom, SubscribeRequest, Timestamp,
};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::extract::{body_limit, json_response, ok_json, ApiError, JsonBody, Params, StreamPath};
use crate::grpc::Grpc;
use crate::json::*;
use crate::{metrics, ReadMsg, State, SubMsg};

/// Items a streamed HTTP read or SSE subscription keeps queued for a slow client.
const HTTP_QUEUE: usize = 4;

/// Refuses query parameters that the route does not take, by the OpenAPI document's list of
/// each operation's parameters (a misspelt filter would otherwise read the whole log).
async fn known_params(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<axum::extract::MatchedPath>();
    if let (Some(query), Some(matched)) = (req.uri().query(), matched) {
        let key = (
            req.method().as_str().to_owned(),
            matched.as_str().to_owned(),
        );
        if let Some(known) = params_by_route().get(&key) {
            let given: Vec<(String, String)> =
                serde_urlencoded::from_str(query).unwrap_or_default();
            let mut unknown: Vec<&str> = given
                .iter()
                .map(|(name, _)| name.as_str())
                .filter(|name| !known.iter().any(|k| k == name))
                .collect();
            unknown.dedup();
            if !unknown.is_empty() {
                let takes = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return ApiError(Error::invalid(
                    "query",
                    format!(
                        "unknown parameter {} (this route takes: {takes})",
                        unknown
                            .iter()
                            .map(|n| format!("'{n}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// The query parameters of each documented operation, by method and path.
fn params_by_route() -> &'static HashMap<(String, String), Vec<String>> {
    static KNOWN: std::sync::OnceLock<HashMap<(String, String), Vec<String>>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut known = HashMap::new();
        for (path, item) in openapi().paths.paths {
            for (method, op) in [("GET", item.get), ("POST", item.post)] {
                let Some(op) = op else { continue };
                let names = op
                    .parameters
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                    .map(|p| p.name)
                    .collect();
                known.insert((method.to_string(), path.clone()), names);
            }
        }
        known
    })
}

/// Filters of `GET /v1/events` and `GET /v1/subscribe`: `stream`, `correlation` or `actor`
/// alone, or any of `category`, `prefix` (of stream ids) and `types`/`tags` (comma-separated;
/// an event matches one of the types and all the tags), which combine. An empty value means
/// the parameter is not given.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// One stream (`from` then counts its revisions).
    #[serde(default, deserialize_with = "opt_text")]
    #[param(max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub stream: Option<String>,
    /// Every stream of a category (the stream id's prefix before the first `-`).
    #[serde(default, deserialize_with = "opt_text")]
    #[param(max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub category: Option<String>,
    /// Every stream whose id starts with this.
    #[serde(default, deserialize_with = "opt_text")]
    #[param(max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub prefix: Option<String>,
    /// Comma-separated event types.
    #[serde(default, deserialize_with = "opt_text")]
    #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub types: Option<String>,
    /// Comma-separated tags, all required.
    #[serde(default, deserialize_with = "opt_text")]
    #[param(pattern = "^[^\\s\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub tags: Option<String>,
    /// Every event of one business transaction: its correlation id.
    #[serde(default, deserialize_with = "opt_text")]
    #[param(
        pattern = "^(|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
    )]
    pub correlation: Option<String>,
    /// Every event of one actor.
    #[serde(default, deserialize_with = "opt_text")]
    #[param(max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub actor: Option<String>,
}

fn split_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl FilterParams {
    fn source(&self) -> Result<Source, Error> {
        let types = split_list(&self.types);
        let tags = split_list(&self.tags);
        let by_type = !types.is_empty() || !tags.is_empty();
        let combining = self.category.is_some() || self.prefix.is_some() || by_type;
        let alone = [
            self.stream.is_some(),
            self.correlation.is_some(),
            self.actor.is_some(),
        ];
        if alone.iter().filter(|a| **a).count() + usize::from(combining) > 1 {
            return Err(Error::invalid(
                "filter",
                "give stream, correlation or actor alone, or any of category, prefix and types/tags",
            ));
        }
        if let Some(s) = &self.stream {
            return Ok(Source::Stream(s.clone()));
        }
        if let Some(c) = &self.correlation {
            // Only the hyphenated form, as the parameter's pattern says.
            return crate::json::hyphenated_uuid(c)
                .map(Source::Correlation)
                .ok_or_else(|| Error::invalid("correlation", format!("'{c}' is not a UUID")));
        }
        if let Some(a) = &self.actor {
            return Ok(Source::Actor(a.clone()));
        }
        Ok(annal_core::Selection {
            category: self.category.clone(),
            stream_prefix: self.prefix.clone(),
            query: by_type.then(|| Query::item(QueryItem { types, tags })),
        }
        .into_source())
    }
}

/// Paging and time travel of reads.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Inclusive start: a revision for a stream, a position otherwise.
    #[serde(default, deserialize_with = "opt_u64")]
    #[param(value_type = Option<u64>, minimum = 0)]
    pub from: Option<u64>,
    /// `forward` (default) or `backward`.
    #[serde(default)]
    #[param(value_type = Option<DirectionJson>)]
    pub direction: Option<DirectionJson>,
    /// At most this many events (default 1000).
    #[serde(default, deserialize_with = "opt_u64")]
    #[param(value_type = Option<u64>, minimum = 0)]
    pub limit: Option<u64>,
    /// A position, or an RFC 3339 time: only events at or before it (empty: not given).
    #[serde(default, deserialize_with = "opt_text")]
    #[param(
        pattern = "^(|[0-9]{1,19}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub as_of: Option<String>,
    /// An RFC 3339 time: only events recorded at or after it (forward reads other than of
    /// one stream; with `from`, the later of the two; empty: not given).
    #[serde(default, deserialize_with = "opt_text")]
    #[param(
        pattern = "^(|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub since: Option<String>,
}

/// An optional text parameter: empty (`?as_of=`) means not given.
fn opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()))
}

fn opt_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("'{s}' is not a non-negative integer"))),
    }
}

fn opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("'{s}' is not an integer from 0 to 4294967295"))
        }),
    }
}

/// Starts a read at the first event recorded at or after `since`: the one after the head
/// the log had just before that instant, or at `from` when that is later (so a page's
/// `next` goes on with `since` kept). Only a forward read of anything but one stream takes
/// it (a stream's `from` counts revisions).
async fn read_since(
    state: &State,
    mut request: ReadRequest,
    since: Option<&str>,
) -> Result<ReadRequest, Error> {
    let Some(since) = since else {
        return Ok(request);
    };
    let at: Timestamp = since.parse().map_err(|_| {
        Error::invalid(
            "since",
            format!("'{since}' is not an RFC 3339 time like 2026-11-23T19:10:27Z"),
        )
    })?;
    let problem = if matches!(request.source, Source::Stream(_)) {
        Some("does not apply to one stream's read, whose from counts revisions")
    } else if request.direction == Direction::Backward {
        Some("applies to forward reads only")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(Error::invalid("since", problem));
    }
    let before = Timestamp(at.0.saturating_sub(1));
    let first = state.store.position_at(before).await?.map_or(0, |p| p + 1);
    // A later `from` (the next page of the same read) goes on from there.
    request.from = Some(request.from.map_or(first, |f| f.max(first)));
    Ok(request)
}

impl ReadParams {
    fn request(self, source: Source) -> Result<ReadRequest, Error> {
        Ok(ReadRequest {
            source,
            from: self.from,
            direction: match self.direction.unwrap_or_default() {
                DirectionJson::Forward => Direction::Forward,
                DirectionJson::Backward => Direction::Backward,
            },
            limit: Some(self.limit.unwrap_or(DEFAULT_HTTP_LIMIT)),
            as_of: self.as_of.as_deref().map(as_of).transpose()?,
        })
    }
}

/// Streams a read as `{"events":[...],"head":H,"next":N}` (`head`: the log's last position
/// when the read was served, absent when it was empty). A read that fails before its first
/// batch answers with the error's status; one that fails later ends its body early (the
/// status is sent by then), so the JSON does not parse and the failure is not taken for the
/// end of the read.
async fn stream_read(state: &State, request: ReadRequest) -> Result<Response, ApiError> {
    let by_revision = matches!(request.source, Source::Stream(_));
    let backward = request.direction == Direction::Backward;
    let limit = request.limit;
    let mut count = 0u64;
    let mut last: Option<u64> = None;
    let mut started = false;
    let (_, mut rx) = state
        .read_batches(request, HTTP_QUEUE, move |msg| {
            let mut out = Vec::with_capacity(4096);
            if !started {
                out.extend_from_slice(b"{\"events\":[");
                started = true;
            }
            match msg {
                ReadMsg::Events(events) => {
                    for e in &events {
                        if count > 0 {
                            out.push(b',');
                        }
                        if let Err(e) = serde_json::to_writer(&mut out, &EventJson::new(e)) {
                            return Some(Err(Error::Internal(format!("encoding an event: {e}"))));
                        }
                        count += 1;
                        last = Some(if by_revision { e.revision } else { e.position });
                    }
                }
                ReadMsg::Packed(_) => {
                    return Some(Err(Error::Internal(
                        "an HTTP read was given a packed batch".into(),
                    )))
                }
                ReadMsg::Failed(e) => return Some(Err(e)),
                ReadMsg::End { head } => {
                    out.extend_from_slice(b"]");
                    if let Some(h) = head {
                        out.extend_from_slice(format!(",\"head\":{h}").as_bytes());
                    }
                    let next = match (limit, last) {
                        (Some(l), Some(last)) if count == l && l > 0 => {
                            if backward {
                                last.checked_sub(1)
                            } else {
                                last.checked_add(1)
                            }
                        }
                        _ => None,
                    };
                    if let Some(n) = next {
                        out.extend_from_slice(format!(",\"next\":{n}").as_bytes());
                    }
                    out.push(b'}');
                }
            }
            Some(Ok(exact(out)))
        })
        .await?;
    let first = match rx.recv().await {
        Some(Ok((Ok(bytes), held))) => crate::answers::held_bytes(bytes, held),
        Some(Ok((Err(e), _)) | Err(e)) => return Err(ApiError(e)),
        None => {
            return Err(ApiError::from(Error::Internal(
                "the read ended without an answer".into(),
            )))
        }
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(Chunks {
            first: Some(first),
            rx,
        }),
    )
        .into_response())
}

/// An answer's bytes in memory of their own size, so that the answer budget counts what
/// they hold (a grown buffer can have up to twice the room it uses).
fn exact(mut out: Vec<u8>) -> Bytes {
    out.shrink_to_fit();
    Bytes::from(out)
}

/// A streamed body: the first chunk, then the rest; a failure ends the body with an error.
struct Chunks {
    first: Option<Bytes>,
    rx: crate::answers::Receiver<Result<Bytes, Error>>,
}

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(first)));
        }
        self.rx.poll_recv(cx).map(|item| {
            item.map(|r| {
                r.and_then(|(r, held)| r.map(|b| crate::answers::held_bytes(b, held)))
                    .map_err(|e| {
                        tracing::warn!(error = %e, "a streamed read failed after its answer began");
                        std::io::Error::other(e.to_string())
                    })
            })
        })
    }
}

#[utoipa::path(post, path = "/v1/streams/{stream_id}", tag = "append",
    params(("stream_id" = String, Path, description = "The stream to append to", min_length = 1, max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    request_body = StreamAppendJson,
    responses(
        (status = 200, description = "Appended and durable", body = AppendResultJson),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 409, description = "Wrong expected revision or event id conflict", body = ErrorJson),
        (status = 413, description = "Too large", body = ErrorJson),
        (status = 503, description = "The store refuses writes", body = ErrorJson),
    ))]
async fn append_stream(
    AxState(state): AxState<Arc<State>>,
    budget: Option<axum::Extension<crate::Budget>>,
    StreamPath(stream_id): StreamPath,
    JsonBody(request, size): JsonBody<StreamAppendJson>,
) -> Result<Response, ApiError> {
    let request = request.into_core(stream_id)?;
    let result = state
        .append(request, size, budget.map(|b| b.0), true)
        .await?;
    Ok(ok_json(&AppendResultJson::from(result)))
}

#[utoipa::path(post, path = "/v1/append", tag = "append",
    request_body = AppendJson,
    responses(
        (status = 200, description = "Appended and durable", body = AppendResultJson),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 409, description = "A concurrency check or the condition failed", body = ErrorJson),
        (status = 413, description = "Too large", body = ErrorJson),
        (status = 503, description = "The store refuses writes", body = ErrorJson),
    ))]
async fn append(
    AxState(state): AxState<Arc<State>>,
    budget: Option<axum::Extension<crate::Budget>>,
    JsonBody(request, size): JsonBody<AppendJson>,
) -> Result<Response, ApiError> {
    let request = request.into_core()?;
    let result = state
        .append(request, size, budget.map(|b| b.0), true)
        .await?;
    Ok(ok_json(&AppendResultJson::from(result)))
}

#[utoipa::path(get, path = "/v1/streams/{stream_id}", tag = "streams",
    params(("stream_id" = String, Path, description = "The stream", min_length = 1, max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses(
        (status = 200, description = "What the store knows of the stream", body = StreamInfoJson),
        (status = 400, description = "Invalid stream id", body = ErrorJson),
        (status = 404, description = "The stream has no event", body = ErrorJson),
    ))]
async fn stream_info(
    AxState(state): AxState<Arc<State>>,
    StreamPath(stream_id): StreamPath,
) -> Result<Response, ApiError> {
    match state.store.stream_info(&stream_id).await? {
        Some(info) => Ok(ok_json(&StreamInfoJson::from(info))),
        None => Err(ApiError(Error::NotFound(format!(
            "stream '{stream_id}' has no event"
        )))),
    }
}

#[utoipa::path(get, path = "/v1/streams/{stream_id}/events", tag = "read",
    params(("stream_id" = String, Path, description = "The stream", min_length = 1, max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"), ReadParams),
    responses(
        (status = 200, description = "Events, streamed", body = EventsPage),
        (status = 400, description = "Invalid request", body = ErrorJson),
    ))]
async fn read_stream(
    AxState(state): AxState<Arc<State>>,
    StreamPath(stream_id): StreamPath,
    Params(params): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let since = params.since.clone();
    let request = params.request(Source::Stream(stream_id))?;
    let request = read_since(&state, request, since.as_deref()).await?;
    stream_read(&state, request).await
}

#[utoipa::path(get, path = "/v1/events", tag = "read",
    params(FilterParams, ReadParams),
    responses(
        (status = 200, description = "Events, streamed", body = EventsPage),
        (status = 400, description = "Invalid request", body = ErrorJson),
    ))]
async fn read_events(
    AxState(state): AxState<Arc<State>>,
    Params(filter): Params<FilterParams>,
    Params(read): Params<ReadParams>,
) -> Result<Response, ApiError> {
    let source = filter.source()?;
    let since = read.since.clone();
    let request = read.request(source)?;
    let request = read_since(&state, request, since.as_deref()).await?;
    stream_read(&state, request).await
}

#[utoipa::path(post, path = "/v1/read", tag = "read",
    request_body = ReadJson,
    responses(
        (status = 200, description = "Events, streamed", body = EventsPage),
        (status = 400, description = "Invalid request", body = ErrorJson),
    ))]
async fn read(
    AxState(state): AxState<Arc<State>>,
    JsonBody(request, _): JsonBody<ReadJson>,
) -> Result<Response, ApiError> {
    let since = request.since.clone();
    let request = request.into_core()?;
    let request = read_since(&state, request, since.as_deref()).await?;
    stream_read(&state, request).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Start after this name (the last one of the previous page).
    #[serde(default, deserialize_with = "opt_text")]
    pub after: Option<String>,
    /// Only streams whose id starts with this (streams only).
    #[serde(default, deserialize_with = "opt_text")]
    pub prefix: Option<String>,
    /// At most this many (default 100, at most 10000).
    #[serde(default, deserialize_with = "opt_u64")]
    #[param(value_type = Option<u64>, minimum = 0)]
    pub limit: Option<u64>,
}

fn page_size(limit: Option<u64>) -> usize {
    limit.unwrap_or(100).clamp(1, 10_000) as usize
}

#[utoipa::path(get, path = "/v1/streams", tag = "streams",
    params(PageParams),
    responses(
        (status = 200, description = "A page of streams in id order", body = StreamsJson),
        (status = 400, description = "Invalid request", body = ErrorJson),
    ))]
async fn list_streams(
    AxState(state): AxState<Arc<State>>,
    Params(p): Params<PageParams>,
) -> Result<Response, ApiError> {
    let limit = page_size(p.limit);
    let streams = state
        .store
        .list_streams(ListStreams {
            prefix: p.prefix,
            after: p.after,
            limit,
        })
        .await?;
    let next_after = (streams.len() == limit)
        .then(|| streams.last().map(|s| s.stream_id.clone()))
        .flatten();
    Ok(ok_json(&StreamsJson {
        streams: streams.into_iter().map(Into::into).collect(),
        next_after,
    }))
}

#[utoipa::path(get, path = "/v1/categories", tag = "streams",
    params(PageParams),
    responses(
        (status = 200, description = "A page of categories in name order", body = CategoriesJson),
        (status = 400, description = "Invalid request", body = ErrorJson),
    ))]
async fn list_categories(
    AxState(state): AxState<Arc<State>>,
    Params(p): Params<PageParams>,
) -> Result<Response, ApiError> {
    let limit = page_size(p.limit);
    let categories = state
        .store
        .list_categories(ListCategories {
            after: p.after,
            limit,
        })
        .await?;
    let next_after = (categories.len() == limit)
        .then(|| categories.last().map(|c| c.category.clone()))
        .flatten();
    Ok(ok_json(&CategoriesJson {
        categories: categories.into_iter().map(Into::into).collect(),
        next_after,
    }))
}

#[utoipa::path(post, path = "/v1/streams/{stream_id}/snapshots", tag = "snapshots",
    params(("stream_id" = String, Path, description = "The stream", min_length = 1, max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    request_body = NewSnapshotJson,
    responses(
        (status = 204, description = "Kept and durable"),
        (status = 400, description = "Invalid snapshot, or a revision the stream has not reached", body = ErrorJson),
        (status = 404, description = "The stream has no event", body = ErrorJson),
        (status = 413, description = "Too large", body = ErrorJson),
        (status = 503, description = "The store refuses writes", body = ErrorJson),
    ))]
async fn put_snapshot(
    AxState(state): AxState<Arc<State>>,
    StreamPath(stream_id): StreamPath,
    JsonBody(snapshot, _): JsonBody<NewSnapshotJson>,
) -> Result<Response, ApiError> {
    state
        .store
        .put_snapshot(snapshot.into_core(stream_id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotParams {
    /// The highest revision the snapshot may be of; absent: the latest.
    #[serde(default)]
    pub at_or_before: Option<u64>,
}

#[utoipa::path(get, path = "/v1/streams/{stream_id}/snapshots", tag = "snapshots",
    params(("stream_id" = String, Path, description = "The stream", min_length = 1, max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"), SnapshotParams),
    responses(
        (status = 200, description = "The stream's snapshot of the highest revision at or before the one asked", body = SnapshotJson),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 404, description = "No such snapshot", body = ErrorJson),
    ))]
async fn get_snapshot(
    AxState(state): AxState<Arc<State>>,
    StreamPath(stream_id): StreamPath,
    Params(p): Params<SnapshotParams>,
) -> Result<Response, ApiError> {
    match state.store.get_snapshot(&stream_id, p.at_or_before).await? {
        Some(s) => Ok(ok_json(&SnapshotJson::new(&s))),
        None => Err(ApiError(Error::NotFound(match p.at_or_before {
            Some(r) => format!("stream '{stream_id}' has no snapshot at or before revision {r}"),
            None => format!("stream '{stream_id}' has no snapshot"),
        }))),
    }
}

#[utoipa::path(delete, path = "/v1/streams/{stream_id}/snapshots", tag = "snapshots",
    params(("stream_id" = String, Path, description = "The stream", min_length = 1, max_length = 512, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses(
        (status = 200, description = "Deleted and durable", body = DeletedJson),
        (status = 400, description = "Invalid stream id", body = ErrorJson),
        (status = 503, description = "The store refuses writes", body = ErrorJson),
    ))]
async fn delete_snapshots(
    AxState(state): AxState<Arc<State>>,
    StreamPath(stream_id): StreamPath,
) -> Result<Response, ApiError> {
    let deleted = state.store.delete_snapshots(&stream_id).await?;
    Ok(ok_json(&DeletedJson { deleted }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeParams {
    /// An RFC 3339 time, e.g. 2026-11-23T19:10:27Z.
    #[param(format = DateTime)]
    pub time: String,
}

#[utoipa::path(get, path = "/v1/position-at", tag = "read",
    params(TimeParams),
    responses(
        (status = 200, description = "The last position recorded at or before the time", body = PositionJson),
        (status = 400, description = "Invalid time", body = ErrorJson),
    ))]
async fn position_at(
    AxState(state): AxState<Arc<State>>,
    Params(p): Params<TimeParams>,
) -> Result<Response, ApiError> {
    let at: Timestamp = p.time.parse().map_err(|_| {
        Error::invalid(
            "time",
            format!(
                "'{}' is not an RFC 3339 time like 2026-11-23T19:10:27Z",
                p.time
            ),
        )
    })?;
    let position = state.store.position_at(at).await?;
    Ok(ok_json(&PositionJson { position }))
}

#[utoipa::path(get, path = "/v1/info", tag = "server",
    responses((status = 200, description = "The server and its store", body = InfoJson)))]
async fn info(AxState(state): AxState<Arc<State>>) -> Result<Response, ApiError> {
    let limits = &state.config.limits;
    Ok(ok_json(&InfoJson {
        version: env!("CARGO_PKG_VERSION").to_string(),
        head: state.store.head().await?,
        uptime_secs: state.started.elapsed().as_secs(),
        max_event_bytes: limits.max_event_bytes as u64,
        max_append_bytes: limits.max_append_bytes as u64,
        poisoned: state.store.health().err(),
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubscribeParams {
    /// `start` (default), `now`, or a position to start after. A `Last-Event-ID` header
    /// (sent by browsers when they reconnect) takes precedence.
    #[serde(default, deserialize_with = "opt_text")]
    pub after: Option<String>,
    /// Milliseconds between heartbeats (default: the server's setting).
    #[serde(default, deserialize_with = "opt_u32")]
    #[param(value_type = Option<u32>, minimum = 0)]
    pub heartbeat_ms: Option<u32>,
}

const SSE_DOC: &str = "Server-Sent Events: `event: event` (id: the position, data: the event), \
`event: caught-up` (data: {\"position\":N}), `event: checkpoint` (id: the position), \
`event: heartbeat` (data: {\"head\":N}), and `event: error` (data: an error body) before the \
stream ends.";

#[utoipa::path(get, path = "/v1/subscribe", tag = "subscribe",
    params(FilterParams, SubscribeParams),
    responses(
        (status = 200, description = SSE_DOC, content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 503, description = "Too many subscriptions", body = ErrorJson),
    ))]
async fn subscribe_get(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Params(filter): Params<FilterParams>,
    Params(p): Params<SubscribeParams>,
) -> Result<Response, ApiError> {
    let resumed = last_event_id(&headers)?;
    let from = match resumed {
        Some(id) => SubscribeFrom::After(id),
        None => match p.after.as_deref() {
            None => SubscribeFrom::Start,
            Some(text) => subscribe_from(text)?,
        },
    };
    let request = SubscribeRequest {
        source: filter.source()?,
        from,
    };
    let field = if resumed.is_some() {
        "Last-Event-ID"
    } else {
        "after"
    };
    sse(&state, request, p.heartbeat_ms)
        .await
        .map_err(|e| resume_field(e, field))
}

/// Names where a refused resume point came from (the engine calls it `from`).
fn resume_field(e: ApiError, field: &str) -> ApiError {
    match e.0 {
        Error::InvalidArgument { field: f, problem } if f == "from" => {
            ApiError(Error::invalid(field, problem))
        }
        other => ApiError(other),
    }
}

#[utoipa::path(post, path = "/v1/subscribe", tag = "subscribe",
    request_body = SubscribeJson,
    responses(
        (status = 200, description = SSE_DOC, content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 503, description = "Too many subscriptions", body = ErrorJson),
    ))]
async fn subscribe_post(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    JsonBody(body, _): JsonBody<SubscribeJson>,
) -> Result<Response, ApiError> {
    let heartbeat = body.heartbeat_ms;
    let mut request = body.into_core();
    let resumed = last_event_id(&headers)?;
    if let Some(id) = resumed {
        request.from = SubscribeFrom::After(id);
    }
    let field = if resumed.is_some() {
        "Last-Event-ID"
    } else {
        "from"
    };
    sse(&state, request, heartbeat)
        .await
        .map_err(|e| resume_field(e, field))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Error::invalid("Last-Event-ID", "is not a position"))
}

async fn sse(
    state: &Arc<State>,
    request: SubscribeRequest,
    heartbeat_ms: Option<u32>,
) -> Result<Response, ApiError> {
    let heartbeat = heartbeat_ms
        .filter(|&ms| ms > 0)
        .map(|ms| Duration::from_millis(ms.into()));
    let rx = state
        .subscribe(request, heartbeat, |msg| {
            let mut out = Vec::with_capacity(1024);
            match msg {
                SubMsg::Events(events) => {
                    for e in &events {
                        out.extend_from_slice(
                            format!("event: event\nid: {}\ndata: ", e.position).as_bytes(),
                        );
                        let _ = serde_json::to_writer(&mut out, &EventJson::new(e));
                        out.extend_from_slice(b"\n\n");
                    }
                }
                SubMsg::CaughtUp(position) => {
                    let data = serde_json::json!({ "position": position });
                    match position {
                        Some(p) => out.extend_from_slice(
                            format!("event: caught-up\nid: {p}\ndata: {data}\n\n").as_bytes(),
                        ),
                        None => out.extend_from_slice(
                            format!("event: caught-up\ndata: {data}\n\n").as_bytes(),
                        ),
                    }
                }
                SubMsg::Checkpoint(p) => out.extend_from_slice(
                    format!("event: checkpoint\nid: {p}\ndata: {{\"position\":{p}}}\n\n")
                        .as_bytes(),
                ),
                SubMsg::Heartbeat(head) => out.extend_from_slice(
                    format!(
                        "event: heartbeat\ndata: {}\n\n",
                        serde_json::json!({ "head": head })
                    )
                    .as_bytes(),
                ),
                SubMsg::Failed(e) => out.extend_from_slice(&sse_error(&e)),
            }
            Ok::<_, std::io::Error>(exact(out))
        })
        .await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(SseBody(rx)),
    )
        .into_response())
}

/// A subscription's events as Server-Sent Events; a subscription stopped by the server
/// ends with an `error` event that says why.
struct SseBody(crate::answers::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for SseBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|item| {
            item.map(|r| match r {
                Ok((answer, held)) => answer.map(|b| crate::answers::held_bytes(b, held)),
                Err(e) => Ok(sse_error(&e)),
            })
        })
    }
}

fn sse_error(e: &Error) -> Bytes {
    let (_, body) = ErrorJson::from_error(e);
    let data = serde_json::to_string(&body).unwrap_or_default();
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

#[utoipa::path(get, path = "/health", tag = "server", security(()),
    responses((status = 200, description = "The process is serving", content_type = "text/plain", body = String)))]
async fn health() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

#[utoipa::path(get, path = "/ready", tag = "server", security(()),
    responses(
        (status = 200, description = "Ready to take reads and writes", content_type = "text/plain", body = String),
        (status = 503, description = "Shutting down, or the store refuses writes", body = ErrorJson),
    ))]
async fn ready(AxState(state): AxState<Arc<State>>) -> Response {
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &ErrorJson::new("unavailable", why),
        ),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics_text(AxState(state): AxState<Arc<State>>) -> Response {
    if let Ok(groups) = state.groups.list().await {
        metrics::groups(&groups);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        metrics::render(state.store.head().await.ok().flatten()),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    json_response(StatusCode::OK, &openapi_document())
}

/// The OpenAPI document as served: what the derive produces, finished with what it cannot
/// say: the token responses of every guarded operation, and the range of unsigned integers.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(openapi()).unwrap_or_default();
    finish_schemas(&mut doc);
    // Metadata keys are names too.
    if let Some(extra) = doc.pointer_mut("/components/schemas/MetadataJson/properties/extra") {
        extra["propertyNames"] = serde_json::json!({
            "minLength": 1,
            "maxLength": annal_core::validate::MAX_NAME_LEN,
            "pattern": crate::json::NO_CONTROL,
        });
        extra["maxProperties"] = annal_core::validate::MAX_METADATA_PAIRS.into();
    }
    let error_ref = serde_json::json!({
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorJson"}}}
    });
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            let Some(ops) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in ops.iter_mut() {
                let public = op
                    .get("security")
                    .and_then(|s| s.as_array())
                    .is_some_and(|s| {
                        s.iter()
                            .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
                    });
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                else {
                    continue;
                };
                if public {
                    continue;
                }
                let mut unauthorized = error_ref.clone();
                unauthorized["description"] = "No valid bearer token (authentication is on)".into();
                responses.entry("401").or_insert(unauthorized);
                let snapshots = path == "/v1/streams/{stream_id}/snapshots";
                if (method == "post"
                    && (path == "/v1/append" || path == "/v1/streams/{stream_id}" || snapshots))
                    || (method == "delete" && snapshots)
                    || (path.starts_with("/v1/groups")
                        && (method != "get" || path.ends_with("/consume")))
                {
                    let mut forbidden = error_ref.clone();
                    forbidden["description"] = "The token may read but not write".into();
                    responses.entry("403").or_insert(forbidden);
                }
            }
        }
    }
    doc
}

/// Says what the derive leaves out, schema by schema: every non-negative integer gets the
/// range the server reads (`u64`, int64 with minimum 0, up to 2^64 - 1; `u32`, int32 with
/// minimum 0, up to 2^32 - 1), and the one-key objects of tagged enums (`{"stream": ...}`)
/// take no other key.
fn finish_schemas(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            let one_key = o.get("type").is_some_and(|t| t == "object")
                && o.get("required")
                    .and_then(|r| r.as_array())
                    .is_some_and(|r| r.len() == 1)
                && o.get("properties")
                    .and_then(|p| p.as_object())
                    .is_some_and(|p| p.len() == 1);
            if one_key && !o.contains_key("additionalProperties") {
                o.insert("additionalProperties".into(), false.into());
            }
            let is_integer = match o.get("type") {
                Some(serde_json::Value::String(t)) => t == "integer",
                Some(serde_json::Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            let unsigned = o
                .get("minimum")
                .and_then(|m| m.as_f64())
                .is_some_and(|m| m >= 0.0);
            if is_integer && unsigned && !o.contains_key("maximum") {
                let max = match o.get("format").and_then(|f| f.as_str()) {
                    Some("int32") => Some(serde_json::Value::from(u32::MAX)),
                    Some("int64") => Some(serde_json::Value::from(u64::MAX)),
                    _ => None,
                };
                if let Some(max) = max {
                    o.remove("format");
                    o.insert("maximum".into(), max);
                }
            }
            for child in o.values_mut() {
                finish_schemas(child);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(finish_schemas),
        _ => {}
    }
}

/// The OpenAPI document of the HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(OpenApi)]
    #[openapi(
        info(title = "Annal", description = "The Annal event store's HTTP/JSON API. The same port serves gRPC (annal.v1)."),
        paths(
            append_stream, append, stream_info, read_stream, read_events, read, list_streams,
            list_categories, position_at, info, subscribe_get, subscribe_post, health, ready,
            metrics_text, put_snapshot, get_snapshot, delete_snapshots,
            crate::groups::http::list_groups, crate::groups::http::create_group,
            crate::groups::http::get_group, crate::groups::http::change_group,
            crate::groups::http::delete_group, crate::groups::http::list_parked,
            crate::groups::http::replay_parked, crate::groups::http::discard_parked,
            crate::groups::http::consume, crate::groups::http::ack,
            crate::groups::http::nack, crate::groups::http::heartbeat
        ),
        components(schemas(ErrorJson, ErrorBody)),
        modifiers(&BearerAuth),
        security(("bearer" = []))
    )]
    struct Doc;

    struct BearerAuth;
    impl utoipa::Modify for BearerAuth {
        fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
            use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
            let components = openapi.components.get_or_insert_with(Default::default);
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &ErrorJson::new("not_found", format!("no route for {method} {}", uri.path())),
    )
}

async fn method_not_allowed(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        let mut r = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &ErrorJson::new(
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ),
        );
        if let Some(allow) = resp.headers().get(header::ALLOW) {
            r.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return r;
    }
    resp
}

/// The bearer token of a request's `Authorization` header, if any. The scheme's name is
/// case-insensitive (RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// True for the routes that write: `POST /v1/append`, `POST /v1/streams/{stream_id}` (one
/// path segment; a `/` in a stream id travels as `%2F`), `POST` and `DELETE` of
/// `/v1/streams/{stream_id}/snapshots`, everything under `/v1/groups` but the `GET`s that
/// only look (joining with `GET .../consume` writes), and the gRPC write methods.
fn appends(method: &Method, path: &str, grpc_method: Option<&str>) -> bool {
    match grpc_method {
        Some(m) => annal_proto::WRITE_METHODS.contains(&m),
        None => {
            let in_stream = path.strip_prefix("/v1/streams/");
            let one_segment = |id: &str| !id.is_empty() && !id.contains('/');
            let groups = path == "/v1/groups" || path.starts_with("/v1/groups/");
            (groups
                && ((method != Method::GET && method != Method::HEAD)
                    || path.ends_with("/consume")))
                || (method == Method::POST
                    && (path == "/v1/append" || in_stream.is_some_and(one_segment)))
                || ((method == Method::POST || method == Method::DELETE)
                    && in_stream
                        .and_then(|p| p.strip_suffix("/snapshots"))
                        .is_some_and(one_segment))
        }
    }
}

/// Checks the bearer token (when authentication is on), refuses an append body declared
/// over the limit before reading it, makes appends pay into the in-flight budget as their
/// bodies arrive (and keep arriving), and counts the request.
async fn guard(AxState(state): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let grpc_method = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(annal_proto::SERVICE))
        .and_then(|p| p.strip_prefix('/'));
    let api = if grpc_method.is_some() {
        "grpc"
    } else {
        "http"
    };
    let open = matches!(path, "/health" | "/ready" | "/openapi.json");
    let writes = appends(req.method(), path, grpc_method);
    if !open {
        let authorized = state.authorize(
            bearer(req.headers()),
            writes,
            "Authorization: Bearer <token>",
        );
        if authorized.is_ok() {
            if let Some(conn) = req.extensions().get::<Arc<crate::conns::Conn>>() {
                conn.authenticate();
            }
        }
        if let Err(e) = authorized {
            metrics::request(api, "refused");
            if grpc_method.is_some() {
                return annal_proto::status_from_error(&e)
                    .into_http::<Body>()
                    .into_response();
            }
            let mut r = ApiError(e).into_response();
            if r.status() == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
    }
    if writes && grpc_method.is_none() {
        let limit = body_limit(&state);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = declared.filter(|&n| n > limit as u64) {
            // Refused before a byte of the body is read.
            metrics::request(api, "4xx");
            let mut r = ApiError(Error::TooLarge {
                what: "request body".into(),
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit,
            })
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    }
    // An append's body pays into the budget as it arrives; any HTTP body must keep arriving.
    // Group requests write, but carry no events: a member's gRPC stream lives as long as
    // the member, and pays nothing.
    let groups = path.starts_with("/v1/groups")
        || grpc_method.is_some_and(|m| annal_proto::GROUP_METHODS.contains(&m));
    let metered = writes && !groups;
    let req = if metered || grpc_method.is_none() {
        let (mut parts, body) = req.into_parts();
        let held = metered.then(crate::Budget::default);
        if let Some(held) = &held {
            parts.extensions.insert(held.clone());
        }
        let conn = parts.extensions.get::<Arc<crate::conns::Conn>>();
        let body = crate::budget::Budgeted::new(body, Arc::clone(&state), held, api, conn);
        Request::from_parts(parts, Body::new(body))
    } else {
        req
    };
    let resp = next.run(req).await;
    metrics::request(api, metrics::class(resp.status().as_u16()));
    resp
}

/// Every route of the port: the HTTP API, the gRPC service, and the guard in front.
pub(crate) fn router(state: Arc<State>) -> Router {
    let body_limit = body_limit(&state);
    let grpc = Grpc::service(Arc::clone(&state));
    crate::groups::http::routes(Router::new())
        .route("/v1/streams", get(list_streams))
        .route(
            "/v1/streams/{stream_id}",
            get(stream_info).post(append_stream),
        )
        .route("/v1/streams/{stream_id}/events", get(read_stream))
        .route(
            "/v1/streams/{stream_id}/snapshots",
            get(get_snapshot)
                .post(put_snapshot)
                .delete(delete_snapshots),
        )
        .route("/v1/append", axum::routing::post(append))
        .route("/v1/events", get(read_events))
        .route("/v1/read", axum::routing::post(read))
        .route("/v1/categories", get(list_categories))
        .route("/v1/position-at", get(position_at))
        .route("/v1/info", get(info))
        .route("/v1/subscribe", get(subscribe_get).post(subscribe_post))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route_service(
            crate::grpc::APPEND_PATH,
            crate::grpc::AppendService::new(Arc::clone(&state)),
        )
        .route_service(&format!("/{}/{{*method}}", annal_proto::SERVICE), grpc)
        .route_layer(middleware::from_fn(known_params))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(method_not_allowed))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .with_state(state)
}
