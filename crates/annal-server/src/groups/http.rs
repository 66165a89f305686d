//! The HTTP API of consumer groups: create, list, show, change and delete them, and list,
//! replay and discard their parked events. Everything but the `GET`s needs a write token.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use utoipa::IntoParams;

use super::json::{
    GroupJson, GroupSettingsJson, GroupStatusJson, GroupsJson, ParkedChoiceJson, ParkedCountJson,
    ParkedJson, ParkedPageJson,
};
use super::runtime::{ask, Cmd};
use crate::extract::{json_response, ok_json, ApiError, JsonBody, Params};
use crate::json::ErrorJson;
use crate::State;

/// The path's group name, checked.
pub struct GroupPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let name = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| p.0)
            .map_err(|e| ApiError(annal_core::Error::invalid("group name", e.body_text())))?;
        super::def::name(&name).map_err(ApiError)?;
        Ok(GroupPath(name))
    }
}

#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, description = "Every consumer group and its state", body = GroupsJson)))]
pub(crate) async fn list_groups(AxState(state): AxState<Arc<State>>) -> Result<Response, ApiError> {
    let groups = state.groups.list().await?;
    Ok(ok_json(&GroupsJson {
        groups: groups.iter().map(GroupStatusJson::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/groups", tag = "groups",
    request_body = GroupJson,
    responses(
        (status = 201, description = "Created, durable and running", body = GroupStatusJson),
        (status = 400, description = "Invalid definition, or a group of that name exists", body = ErrorJson),
        (status = 503, description = "The server has its most groups, or the journal failed", body = ErrorJson),
    ))]
pub(crate) async fn create_group(
    AxState(state): AxState<Arc<State>>,
    JsonBody(group, _): JsonBody<GroupJson>,
) -> Result<Response, ApiError> {
    let def = group.into_def(&super::def::GroupSettings::default())?;
    let status = state.groups.create(def).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &GroupStatusJson::from(&status),
    ))
}

#[utoipa::path(get, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")),
    responses(
        (status = 200, description = "The group and its state", body = GroupStatusJson),
        (status = 400, description = "Invalid name", body = ErrorJson),
        (status = 404, description = "No such group", body = ErrorJson),
    ))]
pub(crate) async fn get_group(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
) -> Result<Response, ApiError> {
    let status = state.groups.status(&name).await?;
    Ok(ok_json(&GroupStatusJson::from(&status)))
}

#[utoipa::path(patch, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")),
    request_body = GroupSettingsJson,
    responses(
        (status = 200, description = "Changed and durable; members join again", body = GroupStatusJson),
        (status = 400, description = "Invalid settings", body = ErrorJson),
        (status = 404, description = "No such group", body = ErrorJson),
    ))]
pub(crate) async fn change_group(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
    JsonBody(settings, _): JsonBody<GroupSettingsJson>,
) -> Result<Response, ApiError> {
    let status = state
        .groups
        .change(&name, |old| Ok(settings.apply(old)))
        .await?;
    Ok(ok_json(&GroupStatusJson::from(&status)))
}

#[utoipa::path(delete, path = "/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")),
    responses(
        (status = 204, description = "Deleted, durably"),
        (status = 400, description = "Invalid name", body = ErrorJson),
        (status = 404, description = "No such group", body = ErrorJson),
    ))]
pub(crate) async fn delete_group(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
) -> Result<Response, ApiError> {
    state.groups.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParkedParams {
    /// Only parked events after this position (the last of the previous page).
    #[serde(default)]
    pub after: Option<u64>,
    /// At most this many (default 100, at most 10000).
    #[serde(default)]
    pub limit: Option<u64>,
}

#[utoipa::path(get, path = "/v1/groups/{name}/parked", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$"), ParkedParams),
    responses(
        (status = 200, description = "The group's parked events, in log order", body = ParkedPageJson),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 404, description = "No such group", body = ErrorJson),
    ))]
pub(crate) async fn list_parked(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
    Params(p): Params<ParkedParams>,
) -> Result<Response, ApiError> {
    let limit = p.limit.unwrap_or(100).min(super::MAX_PARKED_PAGE as u64) as usize;
    let tx = state.groups.sender(&name)?;
    let parked = ask(&tx, |reply| Cmd::Parked {
        after: p.after,
        limit,
        reply,
    })
    .await?;
    Ok(ok_json(&ParkedPageJson {
        parked: parked.iter().map(ParkedJson::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/groups/{name}/parked/replay", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")),
    request_body = ParkedChoiceJson,
    responses(
        (status = 200, description = "How many parked events are delivered again", body = ParkedCountJson),
        (status = 400, description = "Invalid request, or an event that waits behind another", body = ErrorJson),
        (status = 404, description = "No such group or parked event", body = ErrorJson),
    ))]
pub(crate) async fn replay_parked(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
    JsonBody(choice, _): JsonBody<ParkedChoiceJson>,
) -> Result<Response, ApiError> {
    let position = choice.position;
    on_parked(&state, &name, |reply| Cmd::Replay { position, reply }).await
}

/// Asks group `name` to replay or discard parked events; answers with how many.
async fn on_parked(
    state: &State,
    name: &str,
    make: impl FnOnce(super::runtime::Reply<usize>) -> Cmd,
) -> Result<Response, ApiError> {
    let count = ask(&state.groups.sender(name)?, make).await?;
    Ok(ok_json(&ParkedCountJson { count }))
}

#[utoipa::path(post, path = "/v1/groups/{name}/parked/discard", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")),
    request_body = ParkedChoiceJson,
    responses(
        (status = 200, description = "How many parked events are gone, durably", body = ParkedCountJson),
        (status = 400, description = "Invalid request, or an event being replayed", body = ErrorJson),
        (status = 404, description = "No such group or parked event", body = ErrorJson),
    ))]
pub(crate) async fn discard_parked(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
    JsonBody(choice, _): JsonBody<ParkedChoiceJson>,
) -> Result<Response, ApiError> {
    let position = choice.position;
    on_parked(&state, &name, |reply| Cmd::Discard { position, reply }).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsumeParams {
    /// The member's name, for the group's state and its parked events.
    #[param(min_length = 0, max_length = 256)]
    #[serde(default)]
    pub member: Option<String>,
}

const CONSUME_DOC: &str = "Server-Sent Events: `joined` (data: the member id, member_timeout_ms and max_in_flight), then `delivery` (id: the position; data: position, epoch, attempt and the event), and `error` when the membership ends. Acknowledge each delivery with POST .../members/{member}/ack; heartbeat (or ack) within member_timeout. Closing the stream leaves the group.";

#[utoipa::path(get, path = "/v1/groups/{name}/consume", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$"), ConsumeParams),
    responses(
        (status = 200, description = CONSUME_DOC, content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid request", body = ErrorJson),
        (status = 404, description = "No such group", body = ErrorJson),
        (status = 503, description = "The group has its most members", body = ErrorJson),
    ))]
pub(crate) async fn consume(
    AxState(state): AxState<Arc<State>>,
    GroupPath(name): GroupPath,
    Params(p): Params<ConsumeParams>,
) -> Result<Response, ApiError> {
    let member_name = p.member.unwrap_or_default();
    if member_name.len() > 256 {
        return Err(ApiError(annal_core::Error::invalid(
            "member",
            "is longer than 256 bytes",
        )));
    }
    let tx = state.groups.sender(&name)?;
    let (member, rx, settings) = ask(&tx, |reply| Cmd::Join {
        name: member_name,
        reply,
    })
    .await?;
    let joined = serde_json::json!({
        "member": member,
        "member_timeout_ms": settings.member_timeout.as_millis() as u64,
        "max_in_flight": settings.max_in_flight,
    });
    let first = bytes::Bytes::from(format!("event: joined\ndata: {joined}\n\n"));
    let body = SseMember {
        first: Some(first),
        rx,
        tx,
        member,
        done: false,
    };
    Ok((
        [
            (
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            ),
            (
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// A member's deliveries as Server-Sent Events; the member leaves when the stream is
/// dropped (its client went away).
struct SseMember {
    first: Option<bytes::Bytes>,
    rx: tokio::sync::mpsc::Receiver<super::runtime::Out>,
    tx: tokio::sync::mpsc::Sender<Cmd>,
    member: super::machine::MemberId,
    done: bool,
}

impl futures_core::Stream for SseMember {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(super::runtime::Out::Ended(e))) => {
                self.done = true;
                let (_, body) = ErrorJson::from_error(&e);
                let data = serde_json::to_string(&body).unwrap_or_default();
                Poll::Ready(Some(Ok(bytes::Bytes::from(format!(
                    "event: error\ndata: {data}\n\n"
                )))))
            }
            Poll::Ready(Some(super::runtime::Out::Delivery {
                position,
                epoch,
                attempt,
                event,
            })) => {
                let data = serde_json::json!({
                    "position": position,
                    "epoch": epoch,
                    "attempt": attempt,
                    "event": crate::json::EventJson::new(&event),
                });
                Poll::Ready(Some(Ok(bytes::Bytes::from(format!(
                    "event: delivery\nid: {position}\ndata: {data}\n\n"
                )))))
            }
        }
    }
}

impl Drop for SseMember {
    fn drop(&mut self) {
        let tx = self.tx.clone();
        let member = self.member;
        if tx.try_send(Cmd::Leave(member)).is_err() {
            tokio::spawn(async move {
                let _ = tx.send(Cmd::Leave(member)).await;
            });
        }
    }
}

/// An acknowledgement or a nack of one delivery.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleJson {
    pub position: u64,
    /// The delivery's epoch, as it came with it.
    pub epoch: u64,
    /// For a nack: why.
    #[serde(default)]
    pub reason: Option<String>,
    /// For a nack: park it now instead of retrying.
    #[serde(default)]
    pub park: bool,
}

/// The path's group and member.
pub struct MemberPath(pub String, pub super::machine::MemberId);

impl<S: Send + Sync> FromRequestParts<S> for MemberPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let (name, member) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map(|p| p.0)
                .map_err(|e| ApiError(annal_core::Error::invalid("path", e.body_text())))?;
        super::def::name(&name).map_err(ApiError)?;
        let member = member.parse().map_err(|_| {
            ApiError(annal_core::Error::invalid(
                "member",
                format!("'{member}' is not a member id"),
            ))
        })?;
        Ok(MemberPath(name, member))
    }
}

async fn settle(
    state: &State,
    MemberPath(name, member): MemberPath,
    s: SettleJson,
    nack: Option<super::machine::Nack>,
) -> Result<Response, ApiError> {
    let tx = state.groups.sender(&name)?;
    let (position, epoch) = (s.position, s.epoch);
    ask(&tx, |reply| {
        Cmd::settle(
            member,
            position,
            epoch,
            nack,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        )
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/groups/{name}/members/{member}/ack", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$"),
           ("member" = u64, Path, description = "The member id `joined` gave")),
    request_body = SettleJson,
    responses(
        (status = 204, description = "Acknowledged, durably"),
        (status = 400, description = "Invalid request, or not held by this member under this epoch (the lease moved, or it was settled)", body = ErrorJson),
        (status = 404, description = "No such group or member", body = ErrorJson),
    ))]
pub(crate) async fn ack(
    AxState(state): AxState<Arc<State>>,
    path: MemberPath,
    JsonBody(s, _): JsonBody<SettleJson>,
) -> Result<Response, ApiError> {
    settle(&state, path, s, None).await
}

#[utoipa::path(post, path = "/v1/groups/{name}/members/{member}/nack", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$"),
           ("member" = u64, Path, description = "The member id `joined` gave")),
    request_body = SettleJson,
    responses(
        (status = 204, description = "Retried after the backoff, or parked; durably"),
        (status = 400, description = "Invalid request, or not held by this member under this epoch", body = ErrorJson),
        (status = 404, description = "No such group or member", body = ErrorJson),
    ))]
pub(crate) async fn nack(
    AxState(state): AxState<Arc<State>>,
    path: MemberPath,
    JsonBody(s, _): JsonBody<SettleJson>,
) -> Result<Response, ApiError> {
    let reason = s.reason.clone().unwrap_or_default();
    let nack = if s.park {
        super::machine::Nack::Park(reason)
    } else {
        super::machine::Nack::Retry(reason)
    };
    settle(&state, path, s, Some(nack)).await
}

#[utoipa::path(post, path = "/v1/groups/{name}/members/{member}/heartbeat", tag = "groups",
    params(("name" = String, Path, description = "The group", min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$"),
           ("member" = u64, Path, description = "The member id `joined` gave")),
    responses(
        (status = 204, description = "The member is alive"),
        (status = 400, description = "Invalid group name or member id", body = ErrorJson),
        (status = 404, description = "No such group, or the member left or was lost", body = ErrorJson),
    ))]
pub(crate) async fn heartbeat(
    AxState(state): AxState<Arc<State>>,
    MemberPath(name, member): MemberPath,
) -> Result<Response, ApiError> {
    let tx = state.groups.sender(&name)?;
    ask(&tx, |reply| Cmd::Heartbeat(member, Some(reply))).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The group routes.
pub(crate) fn routes(router: Router<Arc<State>>) -> Router<Arc<State>> {
    router
        .route("/v1/groups/{name}/consume", get(consume))
        .route("/v1/groups/{name}/members/{member}/ack", post(ack))
        .route("/v1/groups/{name}/members/{member}/nack", post(nack))
        .route(
            "/v1/groups/{name}/members/{member}/heartbeat",
            post(heartbeat),
        )
        .route("/v1/groups", get(list_groups).post(create_group))
        .route(
            "/v1/groups/{name}",
            get(get_group).patch(change_group).delete(delete_group),
        )
        .route("/v1/groups/{name}/parked", get(list_parked))
        .route("/v1/groups/{name}/parked/replay", post(replay_parked))
        .route("/v1/groups/{name}/parked/discard", post(discard_parked))
}
