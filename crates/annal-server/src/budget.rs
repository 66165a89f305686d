//! What an append's body may hold and how long it may take, for HTTP and gRPC bodies (this
//! file) and framed payloads (`wire.rs`) alike.
//!
//! An append pays into the in-flight budget for the bytes of its body as they arrive
//! (`State::take`), before they are handed on: a client that declares a large body and
//! sends nothing holds nothing, and when the budget is spent the body is not read, so flow
//! control holds the client back instead of the server buffering without bound. The share
//! stays with the request (a [`Budget`] in its extensions) until the store has answered it.
//!
//! A body must keep arriving ([`Pace`]): it may take `body_timeout`, plus a second for every
//! `body_min_rate` bytes received, not counting the time it waited for the budget. A slower
//! one is dropped with [`SlowBody`], and the connection with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::{Budget, State};

/// How long a body may take: `body_timeout`, plus a second for every `body_min_rate` bytes
/// received, not counting the time spent waiting for the budget.
#[derive(Debug, Clone)]
pub struct Pace {
    start: Instant,
    grace: Duration,
    rate: u64,
    received: u64,
    waited: Duration,
}

impl Pace {
    pub fn new(limits: &Limits) -> Pace {
        Pace {
            start: Instant::now(),
            grace: limits.body_timeout,
            rate: limits.body_min_rate.max(1),
            received: 0,
            waited: Duration::ZERO,
        }
    }

    pub fn received(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }

    /// Time spent waiting for the budget, which the client is not charged for.
    pub fn waited(&mut self, d: Duration) {
        self.waited += d;
    }

    /// When the body is late if it has not arrived whole.
    pub fn deadline(&self) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.rate as f64);
        self.start + self.grace + self.waited + earned
    }

    /// The failure of a body that missed its deadline.
    pub fn late(&self, what: &str) -> SlowBody {
        SlowBody(format!(
            "{what} arrived too slowly: {} bytes in {} (a body may take {} plus 1s for every {} bytes)",
            self.received,
            humantime::format_duration(Duration::from_millis(
                self.start.elapsed().as_millis() as u64
            )),
            humantime::format_duration(self.grace),
            self.rate,
        ))
    }
}

/// An append's body that arrived too slowly, and was dropped.
#[derive(Debug, Clone)]
pub struct SlowBody(pub String);

impl std::fmt::Display for SlowBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SlowBody {}

impl SlowBody {
    /// The `SlowBody` behind an error of a body, if that is what it is.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a SlowBody> {
        let mut e = Some(e);
        while let Some(err) = e {
            if let Some(slow) = err.downcast_ref::<SlowBody>() {
                return Some(slow);
            }
            e = err.source();
        }
        None
    }
}

type Take = Pin<Box<dyn Future<Output = Result<(), annal_core::Error>> + Send>>;

/// A request body that must keep arriving, and, for an append, pays for each frame before it
/// is handed on.
pub struct Budgeted {
    inner: Body,
    state: Arc<State>,
    /// Where an append's body pays into the budget; `None` for other requests, which only
    /// keep the pace.
    held: Option<Budget>,
    api: &'static str,
    pace: Pace,
    late: Pin<Box<Sleep>>,
    /// A frame waiting for its share of the budget, and since when.
    waiting: Option<(Frame<Bytes>, Take, Instant)>,
    _receiving: Option<crate::metrics::Receiving>,
    /// Marks the connection as waiting on its client while the body is still to come.
    awaiting: Option<crate::conns::Awaiting>,
}

impl Budgeted {
    pub fn new(
        inner: Body,
        state: Arc<State>,
        held: Option<Budget>,
        api: &'static str,
        conn: Option<&Arc<crate::conns::Conn>>,
    ) -> Self {
        let pace = Pace::new(&state.config.limits);
        let receiving = held.is_some().then(crate::metrics::Receiving::new);
        Budgeted {
            late: Box::pin(tokio::time::sleep_until(pace.deadline())),
            inner,
            state,
            held,
            api,
            pace,
            waiting: None,
            _receiving: receiving,
            awaiting: conn.map(|c| c.awaiting()),
        }
    }
}

impl http_body::Body for Budgeted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some((_, take, since)) = this.waiting.as_mut() {
            let paid = ready!(take.as_mut().poll(cx));
            let since = *since;
            let (frame, _, _) = this.waiting.take().expect("a frame was waiting");
            paid.map_err(axum::Error::new)?;
            this.pace.waited(since.elapsed());
            this.late.as_mut().reset(this.pace.deadline());
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(len) = frame.data_ref().map(Bytes::len) else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                this.pace.received(len);
                this.late.as_mut().reset(this.pace.deadline());
                let Some(held) = this.held.clone() else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                let state = Arc::clone(&this.state);
                let mut take: Take = Box::pin(async move { state.take(&held, len).await });
                match take.as_mut().poll(cx) {
                    Poll::Ready(paid) => {
                        paid.map_err(axum::Error::new)?;
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Pending => {
                        this.waiting = Some((frame, take, Instant::now()));
                        Poll::Pending
                    }
                }
            }
            Poll::Pending => {
                ready!(this.late.as_mut().poll(cx));
                crate::metrics::slow_body(this.api);
                Poll::Ready(Some(Err(axum::Error::new(
                    this.pace.late("the request body"),
                ))))
            }
            other => {
                // The body is whole, or failed: nothing more is awaited from the client.
                this.awaiting = None;
                other
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
