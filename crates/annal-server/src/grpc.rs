//! The gRPC service `annal.v1.EventStore` over the engine.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use annal_core::{Bytes, Error, ListCategories, ListStreams, Timestamp};
use annal_proto as pb;
use annal_proto::append::{decode_append, DecodeAppendError};
use futures_core::Stream;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status};

use crate::{public, ReadMsg, State, SubMsg};
use annal_proto::GroupCall;

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
    /// A consumer group admin call.
    async fn group(
        &self,
        op: GroupCall,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        crate::groups::grpc::admin(&self.state, op, r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    /// The tonic service with message size limits that fit the configured append limit.
    pub fn service(state: Arc<State>) -> pb::event_store_server::EventStoreServer<Grpc> {
        let max_in = state.max_append_message();
        pb::event_store_server::EventStoreServer::new(Grpc { state })
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(usize::MAX)
    }
}

/// The path of the append RPC, which [`AppendService`] serves.
pub const APPEND_PATH: &str = "/annal.v1.EventStore/Append";

/// The append RPC with Annal's own decoder: the message is kept as the bytes that arrived and
/// decoded with [`decode_append`], so each event's data is a slice of them. Decoded into
/// prost's structs instead, every byte would be held twice while the append waits for the
/// store, and only the first copy is paid for in the in-flight budget.
#[derive(Clone)]
pub struct AppendService {
    state: Arc<State>,
}

impl AppendService {
    pub fn new(state: Arc<State>) -> Self {
        AppendService { state }
    }
}

impl tower::Service<http::Request<axum::body::Body>> for AppendService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let max_in = state.max_append_message();
            let mut grpc = tonic::server::Grpc::new(AppendCodec)
                .apply_max_message_size_config(Some(max_in), Some(usize::MAX));
            Ok(grpc.unary(AppendMethod(state), req).await)
        })
    }
}

/// One append, as tonic calls it once the message has arrived whole.
struct AppendMethod(Arc<State>);

impl tonic::server::UnaryService<Bytes> for AppendMethod {
    type Response = pb::AppendResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<pb::AppendResponse>, Status>> + Send>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            let budget = request.extensions().get::<crate::Budget>().cloned();
            let message = request.into_inner();
            let request = decode_append(&message).map_err(|e| {
                status(match e {
                    DecodeAppendError::Malformed(e) => Error::invalid(
                        "request",
                        format!("the message is not an annal.v1.AppendRequest: {e}"),
                    ),
                    DecodeAppendError::Invalid(e) => e,
                })
            })?;
            let result = state
                .append(request, message.len(), budget, true)
                .await
                .map_err(status)?;
            Ok(Response::new(result.into()))
        })
    }
}

/// Takes an append message as the bytes that arrived (a slice of tonic's buffer, not a
/// copy) and writes the answer with prost.
struct AppendCodec;

impl Codec for AppendCodec {
    type Encode = pb::AppendResponse;
    type Decode = Bytes;
    type Encoder = AppendCodec;
    type Decoder = AppendCodec;

    fn encoder(&mut self) -> AppendCodec {
        AppendCodec
    }

    fn decoder(&mut self) -> AppendCodec {
        AppendCodec
    }
}

impl Encoder for AppendCodec {
    type Item = pb::AppendResponse;
    type Error = Status;

    fn encode(&mut self, item: pb::AppendResponse, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding an append's answer: {e}")))
    }
}

impl Decoder for AppendCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

#[tonic::async_trait]
impl pb::event_store_server::EventStore for Grpc {
    /// Never called: the router sends this method's path to [`AppendService`], which
    /// decodes the message without copying it.
    async fn append(
        &self,
        _request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        Err(Status::internal(format!(
            "{APPEND_PATH} is served by its own route"
        )))
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
            ReadMsg::End { .. } => None,
        };
        let (head, rx) = if packed {
            self.state.read_packed(request, READ_QUEUE, convert).await
        } else {
            self.state.read_batches(request, READ_QUEUE, convert).await
        }
        .map_err(status)?;
        let mut response = Response::new(Answers(rx));
        if let Some(head) = head {
            // The head the read was served at, before its first event.
            response.metadata_mut().insert(
                annal_proto::HEAD_HEADER,
                head.to_string().parse().expect("digits"),
            );
        }
        Ok(response)
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

    async fn put_snapshot(
        &self,
        request: Request<pb::PutSnapshotRequest>,
    ) -> Result<Response<pb::PutSnapshotResponse>, Status> {
        self.state
            .store
            .put_snapshot(request.into_inner().into())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PutSnapshotResponse {}))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let r = request.into_inner();
        let snapshot = self
            .state
            .store
            .get_snapshot(&r.stream_id, r.at_or_before)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetSnapshotResponse {
            snapshot: snapshot.map(Into::into),
        }))
    }

    async fn delete_snapshots(
        &self,
        request: Request<pb::DeleteSnapshotsRequest>,
    ) -> Result<Response<pb::DeleteSnapshotsResponse>, Status> {
        let deleted = self
            .state
            .store
            .delete_snapshots(&request.into_inner().stream_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteSnapshotsResponse { deleted }))
    }

    async fn create_group(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Create, r).await
    }

    async fn change_group(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Change, r).await
    }

    async fn delete_group(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Delete, r).await
    }

    async fn get_group(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Get, r).await
    }

    async fn list_groups(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::List, r).await
    }

    async fn list_parked(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Parked, r).await
    }

    async fn replay_parked(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Replay, r).await
    }

    async fn discard_parked(
        &self,
        r: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupResponse>, Status> {
        self.group(GroupCall::Discard, r).await
    }

    type ConsumeStream = crate::groups::grpc::Consumer;

    async fn consume(
        &self,
        r: Request<tonic::Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        crate::groups::grpc::consume(Arc::clone(&self.state), r.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
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
