//! Consumer groups: the admin calls (definitions and states as the HTTP API's JSON text)
//! and [`Member`], a member of a group as a stream of [`Delivery`]s, each settled through
//! its own handle.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use annal_core::{Error, RecordedEvent, Result};
use annal_proto as pb;
use futures_core::Stream;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::Client;

pub use annal_proto::GroupCall;

/// What an admin call is about: a group's name, and the JSON, position, page it needs.
#[derive(Debug, Clone, Default)]
pub struct GroupArgs {
    pub name: String,
    /// A definition (create) or settings (change), as the HTTP API's JSON.
    pub json: String,
    /// A parked event's position (replay, discard); none for all.
    pub position: Option<u64>,
    /// Parked events after this position.
    pub after: Option<u64>,
    /// At most this many parked events (0: the server's default).
    pub limit: u64,
}

fn error_of(status: tonic::Status) -> Error {
    pb::error_from_status(&status)
}

impl Client {
    /// One admin call of consumer groups; the answer is the HTTP API's JSON (empty for a
    /// delete).
    pub async fn group_call(&self, call: GroupCall, args: GroupArgs) -> Result<String> {
        let message = pb::GroupRequest {
            name: args.name,
            json: args.json,
            position: args.position,
            after: args.after,
            limit: args.limit,
        };
        let mut grpc = self.grpc.clone();
        let r = self.request(message);
        let answer = match call {
            GroupCall::Create => grpc.create_group(r).await,
            GroupCall::Change => grpc.change_group(r).await,
            GroupCall::Delete => grpc.delete_group(r).await,
            GroupCall::Get => grpc.get_group(r).await,
            GroupCall::List => grpc.list_groups(r).await,
            GroupCall::Parked => grpc.list_parked(r).await,
            GroupCall::Replay => grpc.replay_parked(r).await,
            GroupCall::Discard => grpc.discard_parked(r).await,
        };
        Ok(answer.map_err(error_of)?.into_inner().json)
    }

    /// Joins consumer group `group` as `member` (a name for its state and parked events).
    pub async fn join_group(&self, group: &str, member: &str) -> Result<Member> {
        let (requests, rx) = mpsc::channel(1024);
        let (stop, stopped) = oneshot::channel();
        let join = pb::ConsumeRequest {
            kind: Some(pb::consume_request::Kind::Join(pb::JoinGroup {
                group: group.to_string(),
                member: member.to_string(),
            })),
        };
        requests
            .send(join)
            .await
            .map_err(|_| Error::Internal("the request queue closed".into()))?;
        let mut inbound = self
            .grpc
            .clone()
            .consume(self.request(Requests {
                rx,
                stop: stopped,
                held: None,
            }))
            .await
            .map_err(error_of)?
            .into_inner();
        let joined = match inbound.message().await.map_err(error_of)? {
            Some(pb::ConsumeResponse {
                kind: Some(pb::consume_response::Kind::Joined(j)),
            }) => j,
            _ => {
                return Err(Error::Internal(
                    "the server did not answer the join with Joined".into(),
                ))
            }
        };
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (deliveries, out) = mpsc::channel(joined.max_in_flight as usize + 1);
        let beat =
            Duration::from_millis(joined.member_timeout_ms / 3).max(Duration::from_millis(5));
        tokio::spawn(pump(
            inbound,
            stop,
            requests.clone(),
            Arc::clone(&pending),
            deliveries,
            beat,
        ));
        Ok(Member {
            id: joined.member,
            out,
            settle: Settle { requests, pending },
        })
    }
}

/// Who waits for which settlement; `None` once the membership ended.
type Pending = Arc<Mutex<Option<HashMap<(u64, u64), oneshot::Sender<Result<()>>>>>>;

/// The requests a member sends, as tonic wants them; they end when the member's pump
/// does (its `stop` is dropped), whoever still holds a delivery.
struct Requests {
    rx: mpsc::Receiver<pb::ConsumeRequest>,
    stop: oneshot::Receiver<()>,
    /// A request taken while gathering acks, sent next.
    held: Option<pb::ConsumeRequest>,
}

impl Stream for Requests {
    type Item = pb::ConsumeRequest;
    /// The next request; acks queued together go as one message.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use pb::consume_request::Kind;
        if Pin::new(&mut self.stop).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let first = match self.held.take() {
            Some(r) => r,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(Some(r)) => r,
                other => return other,
            },
        };
        let Some(Kind::Acks(mut acks)) = first.kind else {
            return Poll::Ready(Some(first));
        };
        while acks.items.len() < 1024 {
            match self.rx.try_recv() {
                Ok(pb::ConsumeRequest {
                    kind: Some(Kind::Acks(more)),
                }) => acks.items.extend(more.items),
                Ok(other) => {
                    self.held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        Poll::Ready(Some(pb::ConsumeRequest {
            kind: Some(Kind::Acks(acks)),
        }))
    }
}

/// Takes what the server sends: deliveries to the member, settlements to their waiters;
/// and keeps the member alive with heartbeats until the stream ends.
async fn pump(
    mut inbound: tonic::Streaming<pb::ConsumeResponse>,
    _stop: oneshot::Sender<()>,
    requests: mpsc::Sender<pb::ConsumeRequest>,
    pending: Pending,
    deliveries: mpsc::Sender<Result<Delivery>>,
    beat: Duration,
) {
    use pb::consume_response::Kind;
    let settle = Settle {
        requests: requests.clone(),
        pending: Arc::clone(&pending),
    };
    let mut ticks = tokio::time::interval(beat);
    // Deliveries the member has not taken yet: kept here, so that waiting for the member
    // never stops the heartbeats or the settlements its acks wait for.
    let mut backlog: std::collections::VecDeque<Delivery> = Default::default();
    let ended = loop {
        let msg = tokio::select! {
            permit = deliveries.reserve(), if !backlog.is_empty() => {
                let Ok(permit) = permit else { break None };
                if let Some(d) = backlog.pop_front() {
                    permit.send(Ok(d));
                }
                continue;
            }
            msg = inbound.message() => msg,
            _ = ticks.tick() => {
                let beat = pb::ConsumeRequest { kind: Some(pb::consume_request::Kind::Heartbeat(pb::Empty {})) };
                if requests.send(beat).await.is_err() {
                    break None;
                }
                continue;
            }
            // The member was dropped: leave.
            () = deliveries.closed() => break None,
        };
        match msg {
            Ok(Some(pb::ConsumeResponse {
                kind: Some(Kind::Deliveries(batch)),
            })) => {
                let mut failed = None;
                for d in batch.items {
                    let event = match d.event.map(pb::recorded_event) {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        None => {
                            failed = Some(Error::Internal("a delivery without its event".into()));
                            break;
                        }
                    };
                    let delivery = Delivery {
                        event,
                        position: d.position,
                        epoch: d.epoch,
                        attempt: d.attempt,
                        settle: settle.clone(),
                    };
                    backlog.push_back(delivery);
                }
                if failed.is_some() {
                    break failed;
                }
            }
            Ok(Some(pb::ConsumeResponse {
                kind: Some(Kind::Settled(batch)),
            })) => {
                let mut waiting = lock(&pending);
                let Some(waiting) = waiting.as_mut() else {
                    break None;
                };
                for s in batch.items {
                    let result = match s.error {
                        None => Ok(()),
                        Some(detail) => Err(pb::error_from_status(&tonic::Status::with_details(
                            tonic::Code::Unknown,
                            "",
                            detail.encode_to_vec().into(),
                        ))),
                    };
                    if let Some(w) = waiting.remove(&(s.position, s.epoch)) {
                        let _ = w.send(result);
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break Some(Error::Unavailable("the server ended the membership".into())),
            Err(status) => break Some(error_of(status)),
        }
    };
    // Whoever still waits for a settlement learns it will not come.
    let waiting: Vec<_> = lock(&pending)
        .take()
        .map(|m| m.into_values().collect())
        .unwrap_or_default();
    let why = ended
        .clone()
        .unwrap_or_else(|| Error::Unavailable("the member left".into()));
    for w in waiting {
        let _ = w.send(Err(why.clone()));
    }
    if let Some(e) = ended {
        let _ = deliveries.try_send(Err(e));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends acks and nacks, and waits for them to settle.
#[derive(Clone)]
struct Settle {
    requests: mpsc::Sender<pb::ConsumeRequest>,
    pending: Pending,
}

impl Settle {
    async fn send(&self, position: u64, epoch: u64, kind: pb::consume_request::Kind) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(p) => p.insert((position, epoch), tx),
            None => return Err(Error::Unavailable("the membership ended".into())),
        };
        if self
            .requests
            .send(pb::ConsumeRequest { kind: Some(kind) })
            .await
            .is_err()
        {
            if let Some(p) = lock(&self.pending).as_mut() {
                p.remove(&(position, epoch));
            }
            return Err(Error::Unavailable("the membership ended".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Unavailable("the membership ended".into())))
    }
}

/// A member of a consumer group: the events the group hands it, in order per key.
pub struct Member {
    /// Its id in the group.
    pub id: u64,
    out: mpsc::Receiver<Result<Delivery>>,
    settle: Settle,
}

impl Member {
    /// The next delivery; an error when the membership ended (the group was changed or
    /// deleted, the server stopped), then `None`.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.out.recv().await
    }

    /// Leaves the group: what it holds unacknowledged goes to other members.
    pub fn leave(self) {
        drop(self.settle);
        drop(self.out);
    }
}

/// An event handed to a member, with what settles it.
pub struct Delivery {
    pub event: RecordedEvent,
    pub position: u64,
    /// Names this delivery in its ack or nack.
    pub epoch: u64,
    /// 1 for the first delivery of the event, 2 for its first retry, ...
    pub attempt: u32,
    settle: Settle,
}

impl Delivery {
    /// The event was handled; returns once the group has it durably. Refused (with why)
    /// when the delivery's lease ended first: the event was or will be delivered again.
    pub async fn ack(&self) -> Result<()> {
        let kind = pb::consume_request::Kind::Acks(pb::Acks {
            items: vec![pb::AckDelivery {
                position: self.position,
                epoch: self.epoch,
            }],
        });
        self.settle.send(self.position, self.epoch, kind).await
    }

    /// The event could not be handled: retried after the group's backoff (parked once its
    /// attempts run out).
    pub async fn nack(&self, reason: &str) -> Result<()> {
        self.nack_with(reason, false).await
    }

    /// The event cannot be handled: parked now, with `reason`.
    pub async fn park(&self, reason: &str) -> Result<()> {
        self.nack_with(reason, true).await
    }

    async fn nack_with(&self, reason: &str, park: bool) -> Result<()> {
        let kind = pb::consume_request::Kind::Nack(pb::NackDelivery {
            position: self.position,
            epoch: self.epoch,
            reason: reason.to_string(),
            park,
        });
        self.settle.send(self.position, self.epoch, kind).await
    }
}
