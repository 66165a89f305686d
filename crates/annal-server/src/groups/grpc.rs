//! Consumer groups over gRPC: the admin calls (their definitions and states as the HTTP
//! API's JSON) and `Consume`, a member as a bidirectional stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use annal_core::Error;
use annal_proto as pb;
use futures_core::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::json::{
    GroupJson, GroupSettingsJson, GroupStatusJson, GroupsJson, ParkedCountJson, ParkedJson,
    ParkedPageJson,
};
use super::machine::Nack;
use super::runtime::{ask, Cmd, Out};
use crate::State;

use annal_proto::GroupCall;

fn to_json<T: serde::Serialize>(v: &T) -> Result<pb::GroupResponse, Error> {
    serde_json::to_string(v)
        .map(|json| pb::GroupResponse { json })
        .map_err(|e| Error::Internal(format!("encoding the answer failed: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|e| Error::invalid("json", e.to_string()))
}

/// One admin call.
pub async fn admin(
    state: &State,
    op: GroupCall,
    r: pb::GroupRequest,
) -> Result<pb::GroupResponse, Error> {
    let groups = &state.groups;
    if !matches!(op, GroupCall::Create | GroupCall::List) {
        super::def::name(&r.name)?;
    }
    match op {
        GroupCall::Create => {
            let def = from_json::<GroupJson>(&r.json)?.into_def(&Default::default())?;
            to_json(&GroupStatusJson::from(&groups.create(def).await?))
        }
        GroupCall::Change => {
            let settings: GroupSettingsJson = from_json(&r.json)?;
            let status = groups
                .change(&r.name, |old| Ok(settings.apply(old)))
                .await?;
            to_json(&GroupStatusJson::from(&status))
        }
        GroupCall::Delete => {
            groups.delete(&r.name).await?;
            Ok(pb::GroupResponse::default())
        }
        GroupCall::Get => to_json(&GroupStatusJson::from(&groups.status(&r.name).await?)),
        GroupCall::List => to_json(&GroupsJson {
            groups: groups
                .list()
                .await?
                .iter()
                .map(GroupStatusJson::from)
                .collect(),
        }),
        GroupCall::Parked => {
            let limit = match r.limit {
                0 => 100,
                n => n.min(super::MAX_PARKED_PAGE as u64) as usize,
            };
            let after = r.after;
            let parked = ask(&groups.sender(&r.name)?, |reply| Cmd::Parked {
                after,
                limit,
                reply,
            })
            .await?;
            to_json(&ParkedPageJson {
                parked: parked.iter().map(ParkedJson::from).collect(),
            })
        }
        GroupCall::Replay | GroupCall::Discard => {
            let position = r.position;
            let tx = groups.sender(&r.name)?;
            let count = match op {
                GroupCall::Replay => ask(&tx, |reply| Cmd::Replay { position, reply }).await?,
                _ => ask(&tx, |reply| Cmd::Discard { position, reply }).await?,
            };
            to_json(&ParkedCountJson { count })
        }
    }
}

/// A member's answers: what its group hands it, and how its acks settled.
pub struct Consumer(mpsc::Receiver<Result<pb::ConsumeResponse, Status>>);

impl Stream for Consumer {
    type Item = Result<pb::ConsumeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn detail(e: &Error) -> pb::ErrorDetail {
    let status = pb::status_from_error(&crate::public(e.clone()));
    pb::ErrorDetail::decode(status.details()).unwrap_or_default()
}

fn response(kind: pb::consume_response::Kind) -> pb::ConsumeResponse {
    pb::ConsumeResponse { kind: Some(kind) }
}

/// A member: waits for its `JoinGroup`, joins, and then serves it until either side ends.
pub async fn consume(
    state: Arc<State>,
    mut inbound: Streaming<pb::ConsumeRequest>,
) -> Result<Consumer, Error> {
    use pb::consume_request::Kind;
    let timeout = state.config.limits.hello_timeout;
    let first = tokio::time::timeout(timeout, inbound.message())
        .await
        .map_err(|_| {
            Error::invalid(
                "consume",
                format!(
                    "no JoinGroup within {} (hello_timeout)",
                    humantime::format_duration(timeout)
                ),
            )
        })?
        .map_err(|s| Error::invalid("consume", s.message().to_string()))?;
    let Some(pb::ConsumeRequest {
        kind: Some(Kind::Join(join)),
    }) = first
    else {
        return Err(Error::invalid(
            "consume",
            "the first message must be a JoinGroup",
        ));
    };
    super::def::name(&join.group)?;
    if join.member.len() > 256 {
        return Err(Error::invalid("member", "is longer than 256 bytes"));
    }
    let tx = state.groups.sender(&join.group)?;
    let (member, mut deliveries, settings) = ask(&tx, |reply| Cmd::Join {
        name: join.member.clone(),
        reply,
    })
    .await?;
    let cap = settings.max_in_flight as usize * 2 + 16;
    let (out, rx) = mpsc::channel(cap);
    let _ = out
        .send(Ok(response(pb::consume_response::Kind::Joined(
            pb::Joined {
                member,
                member_timeout_ms: u64::try_from(settings.member_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                max_in_flight: settings.max_in_flight,
            },
        ))))
        .await;
    // Deliveries and settlements go out as they come, each kind in batches of what is
    // ready at once.
    let (settle_tx, mut settlements) = mpsc::channel::<pb::Settled>(cap);
    let forward = out.clone();
    tokio::spawn(async move {
        use pb::consume_response::Kind as Out2;
        const BATCH: usize = 256;
        loop {
            let msg = tokio::select! {
                d = deliveries.recv() => {
                    let Some(first) = d else {
                        // The group let the member go without a word: its queue was full.
                        let e = Error::Unavailable(
                            "the group let this member go: it did not take its deliveries in time; join again".into(),
                        );
                        let _ = forward.send(Err(pb::status_from_error(&e))).await;
                        return;
                    };
                    let mut items = Vec::new();
                    let mut ended = None;
                    let mut next = Some(first);
                    while let Some(d) = next.take() {
                        match d {
                            Out::Delivery { position, epoch, attempt, event } => {
                                items.push(pb::Delivery { position, epoch, attempt, event: Some(event.into()) });
                            }
                            Out::Ended(e) => {
                                ended = Some(e);
                                break;
                            }
                        }
                        if items.len() < BATCH {
                            next = deliveries.try_recv().ok();
                        }
                    }
                    if !items.is_empty()
                        && forward.send(Ok(response(Out2::Deliveries(pb::Deliveries { items })))).await.is_err()
                    {
                        return;
                    }
                    if let Some(e) = ended {
                        let _ = forward.send(Err(pb::status_from_error(&e))).await;
                        return;
                    }
                    continue;
                }
                s = settlements.recv() => {
                    let Some(first) = s else { return };
                    let mut items = vec![first];
                    while items.len() < BATCH {
                        match settlements.try_recv() {
                            Ok(s) => items.push(s),
                            Err(_) => break,
                        }
                    }
                    Ok(response(Out2::Settled(pb::Settlements { items })))
                }
            };
            if forward.send(msg).await.is_err() {
                return;
            }
        }
    });
    // Acks, nacks and heartbeats come in; each ack or nack is settled on its own.
    tokio::spawn(async move {
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            let settles: Vec<(u64, u64, Option<Nack>)> = match msg.kind {
                Some(Kind::Acks(a)) => a
                    .items
                    .into_iter()
                    .map(|a| (a.position, a.epoch, None))
                    .collect(),
                Some(Kind::Nack(n)) => vec![(
                    n.position,
                    n.epoch,
                    Some(if n.park {
                        Nack::Park(n.reason)
                    } else {
                        Nack::Retry(n.reason)
                    }),
                )],
                Some(Kind::Heartbeat(_)) => {
                    if tx.send(Cmd::Heartbeat(member, None)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Kind::Join(_)) | None => {
                    let e =
                        Error::invalid("consume", "a member joins once, with its first message");
                    let _ = out.send(Err(pb::status_from_error(&e))).await;
                    break;
                }
            };
            let mut gone = false;
            for (position, epoch, nack) in settles {
                // Room for the settlement is taken first: a member that does not read its
                // settlements stops being read from, and holds no more than its queue.
                let Ok(permit) = settle_tx.clone().reserve_owned().await else {
                    gone = true;
                    break;
                };
                let reply: super::runtime::Waiter = Box::new(move |r| {
                    permit.send(pb::Settled {
                        position,
                        epoch,
                        error: r.err().map(|e| detail(&e)),
                    });
                });
                if tx
                    .send(Cmd::settle(member, position, epoch, nack, reply))
                    .await
                    .is_err()
                {
                    gone = true;
                    break;
                }
            }
            if gone {
                break;
            }
        }
        // The member is gone: what it held goes to others.
        let _ = tx.send(Cmd::Leave(member)).await;
    });
    Ok(Consumer(rx))
}
