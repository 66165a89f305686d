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
use crate::http::{json_response, ok_json, ApiError, JsonBody, Params};
use crate::json::ErrorJson;
use crate::State;

/// The most parked events one page lists.
pub const MAX_PARKED_PAGE: usize = 10_000;

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
    let limit = p.limit.unwrap_or(100).min(MAX_PARKED_PAGE as u64) as usize;
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

/// The group routes.
pub(crate) fn routes(router: Router<Arc<State>>) -> Router<Arc<State>> {
    router
        .route("/v1/groups", get(list_groups).post(create_group))
        .route(
            "/v1/groups/{name}",
            get(get_group).patch(change_group).delete(delete_group),
        )
        .route("/v1/groups/{name}/parked", get(list_parked))
        .route("/v1/groups/{name}/parked/replay", post(replay_parked))
        .route("/v1/groups/{name}/parked/discard", post(discard_parked))
}
