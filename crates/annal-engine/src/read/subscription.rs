//! Subscriptions: a forward cursor that, at the head of the log, waits for it to grow,
//! with the caught-up marker and checkpoints of filtered subscriptions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use annal_core::{Result, SubscriptionItem};
use futures_core::Stream;
use tokio::sync::watch;

use super::Cursor;

type Wait = Pin<Box<dyn Future<Output = watch::Receiver<u64>> + Send>>;

/// A subscription: a forward cursor that, at the head of the log, waits for it to grow.
pub(crate) struct Subscription {
    pub cursor: Cursor,
    pub rx: Option<watch::Receiver<u64>>,
    pub wait: Option<Wait>,
    pub caught_up: bool,
    /// The highest position reported so far: by an event, the caught-up marker or a
    /// checkpoint.
    pub reported: Option<u64>,
    pub done: bool,
}

impl Stream for Subscription {
    type Item = Result<SubscriptionItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(w) = this.wait.as_mut() {
                match w.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(rx) => {
                        this.rx = Some(rx);
                        this.wait = None;
                    }
                }
            }
            if this.cursor.shared.is_closed() {
                this.done = true;
                return Poll::Ready(None);
            }
            let Some(rx) = this.rx.as_mut() else {
                this.done = true;
                return Poll::Ready(None);
            };
            let head = *rx.borrow_and_update();
            if this.cursor.shared.is_closed() {
                this.done = true;
                return Poll::Ready(None);
            }
            this.cursor.max_pos = head.checked_sub(1);
            match this.cursor.next_event() {
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(e)) => {
                    this.reported = Some(e.position);
                    return Poll::Ready(Some(Ok(SubscriptionItem::Event(e))));
                }
                Ok(None) => {
                    let scanned = head.checked_sub(1);
                    if !this.caught_up {
                        this.caught_up = true;
                        this.reported = this.reported.max(scanned);
                        return Poll::Ready(Some(Ok(SubscriptionItem::CaughtUp {
                            position: scanned,
                        })));
                    }
                    // Everything up to the head has been looked at: say so, once per advance
                    // past events this subscription skipped.
                    if let Some(position) = scanned.filter(|&p| Some(p) > this.reported) {
                        this.reported = Some(position);
                        return Poll::Ready(Some(Ok(SubscriptionItem::Checkpoint { position })));
                    }
                    let Some(mut rx) = this.rx.take() else {
                        continue;
                    };
                    this.wait = Some(Box::pin(async move {
                        let _ = rx.changed().await;
                        rx
                    }));
                }
            }
        }
    }
}
