//! The gRPC service `annal.v1.EventStore` over the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use annal_core::{ListCategories, ListStreams, Timestamp};
use annal_proto as pb;
use futures_core::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::{public, ReadMsg, State, SubMsg};

/// Batches a read or subscription keeps queued for a slow gRPC client.
const READ_QUEUE: usize = 4;

/// A read's or a subscription's answers; one the server stopped (its answers were not
/// taken) ends with the error that says why.
pub struct Answers<T>(crate::answers::Receiver<Result<T, Status>>);

impl<T> Stream for Answers<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map_err(status).and_then(|(r, _held)| r)))
    }
}

/// The most entries one listing answers; a client pages with `after` for more (the Rust
/// client does so when asked for everything).
pub const MAX_PAGE: usize = 10_000;

/// A listing's page size: 0 (everything) and anything larger become [`MAX_PAGE`].
fn page(limit: u64) -> usize {
    match pb::page_limit(limit) {
        0 => MAX_PAGE,
        n => n.min(MAX_PAGE),
    }
}

fn status(e: annal_core::Error) -> Status {
    pb::status_from_error(&public(e))
}

/// The service; one per server, shared by every connection.
pub struct Grpc {
    pub state: Arc<State>,
}

impl Grpc {
    /// The tonic service with message size limits that fit the configured append limit.
    pub fn service(state: Arc<State>) -> pb::event_store_server::EventStoreServer<Grpc> {
        let max_in = state.max_append_message();
        pb::event_store_server::EventStoreServer::new(Grpc { state })
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl pb::event_store_server::EventStore for Grpc {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let budget = request.extensions().get::<crate::Budget>().cloned();
        let message = request.into_inner();
        let size = message.encoded_len();
        let request = pb::append_request(message).map_err(status)?;
        let result = self
            .state
            .append(request, size, budget, true)
            .await
            .map_err(status)?;
        Ok(Response::new(result.into()))
    }

    type ReadStream = Answers<pb::ReadResponse>;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let message = request.into_inner();
        let packed = message.packed;
        let request = pb::read_request(message).map_err(status)?;
        let convert = move |msg| match msg {
            ReadMsg::Events(events) => Some(Ok(pb::ReadResponse::of(events, packed))),
            ReadMsg::Packed(bytes) => Some(Ok(pb::ReadResponse {
                packed: bytes.into(),
                ..Default::default()
            })),
            ReadMsg::Failed(e) => Some(Err(pb::status_from_error(&e))),
            ReadMsg::End => None,
        };
        let rx = if packed {
            self.state.read_packed(request, READ_QUEUE, convert).await
        } else {
            self.state.read_batches(request, READ_QUEUE, convert).await
        }
        .map_err(status)?;
        Ok(Response::new(Answers(rx)))
    }

    type SubscribeStream = Answers<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let message = request.into_inner();
        let heartbeat =
            (message.heartbeat_ms > 0).then(|| Duration::from_millis(message.heartbeat_ms.into()));
        let packed = message.packed;
        let request = pb::subscribe_request(message).map_err(status)?;
        let rx = self
            .state
            .subscribe(request, heartbeat, move |msg| {
                use pb::subscribe_response::Item;
                let item = match msg {
                    SubMsg::Events(events) => Item::Events(pb::ReadResponse::of(events, packed)),
                    SubMsg::CaughtUp(position) => Item::CaughtUp(pb::CaughtUp { position }),
                    SubMsg::Checkpoint(position) => Item::Checkpoint(pb::Checkpoint { position }),
                    SubMsg::Heartbeat(head) => Item::Heartbeat(pb::Heartbeat { head }),
                    SubMsg::Failed(e) => return Err(pb::status_from_error(&e)),
                };
                Ok(pb::SubscribeResponse { item: Some(item) })
            })
            .await
            .map_err(status)?;
        Ok(Response::new(Answers(rx)))
    }

    async fn get_stream(
        &self,
        request: Request<pb::GetStreamRequest>,
    ) -> Result<Response<pb::GetStreamResponse>, Status> {
        let info = self
            .state
            .store
            .stream_info(&request.into_inner().stream_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetStreamResponse {
            info: info.map(Into::into),
        }))
    }

    async fn list_streams(
        &self,
        request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let r = request.into_inner();
        let streams = self
            .state
            .store
            .list_streams(ListStreams {
                prefix: r.prefix,
                after: r.after,
                limit: page(r.limit),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListStreamsResponse {
            streams: streams.into_iter().map(Into::into).collect(),
        }))
    }

    async fn list_categories(
        &self,
        request: Request<pb::ListCategoriesRequest>,
    ) -> Result<Response<pb::ListCategoriesResponse>, Status> {
        let r = request.into_inner();
        let categories = self
            .state
            .store
            .list_categories(ListCategories {
                after: r.after,
                limit: page(r.limit),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListCategoriesResponse {
            categories: categories.into_iter().map(Into::into).collect(),
        }))
    }

    async fn position_at(
        &self,
        request: Request<pb::PositionAtRequest>,
    ) -> Result<Response<pb::PositionAtResponse>, Status> {
        let position = self
            .state
            .store
            .position_at(Timestamp(request.into_inner().at_us))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PositionAtResponse { position }))
    }

    async fn server_info(
        &self,
        _request: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        let limits = &self.state.config.limits;
        Ok(Response::new(pb::ServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            head: self.state.store.head().await.map_err(status)?,
            max_event_bytes: limits.max_event_bytes as u64,
            max_append_bytes: limits.max_append_bytes as u64,
            poisoned: self.state.store.health().err(),
        }))
    }
}
