//! The in-flight append budget, taken by an HTTP or gRPC append before its body is read.
//!
//! An append's body is wrapped so that, before its first bytes are handed on, it is
//! admitted (`State::admit`, as a framed append is) for its whole size: the
//! `Content-Length` of an HTTP request (the body limit when there is none), or the length
//! in the 5-byte prefix of a gRPC message. Taking it all at once means two large requests
//! can never each hold half of the budget and wait for the other. When the budget is spent
//! the body is not read, so flow control holds the client back instead of the server
//! buffering without bound. The permits stay with the request (a [`Budget`] in its
//! extensions) until the engine has answered it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use http_body::Frame;
use tokio::sync::OwnedSemaphorePermit;

use crate::{Budget, State};

type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, annal_core::Error>> + Send>>;

/// How a request's size is known.
#[derive(Clone, Copy)]
pub enum Size {
    /// Declared up front (HTTP `Content-Length`, or the body limit).
    Known(usize),
    /// In the prefix of the first gRPC message.
    GrpcPrefix,
}

/// A request body that pays for itself before it is read.
pub struct Budgeted {
    inner: Body,
    state: Arc<State>,
    held: Budget,
    size: Size,
    paid: bool,
    /// The first frame, waiting for its request's permits (gRPC).
    waiting: Option<(Option<Frame<Bytes>>, Acquire)>,
}

impl Budgeted {
    pub fn new(inner: Body, state: Arc<State>, held: Budget, size: Size) -> Self {
        Budgeted {
            inner,
            state,
            held,
            size,
            paid: false,
            waiting: None,
        }
    }

    fn acquire(&self, bytes: usize) -> Acquire {
        let state = Arc::clone(&self.state);
        Box::pin(async move { state.admit(bytes).await })
    }
}

impl http_body::Body for Budgeted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if let Some((_, acquire)) = self.waiting.as_mut() {
                let permit = ready!(acquire.as_mut().poll(cx)).map_err(axum::Error::new)?;
                self.held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(permit);
                self.paid = true;
                let (frame, _) = self.waiting.take().expect("a frame was waiting");
                if let Some(frame) = frame {
                    return Poll::Ready(Some(Ok(frame)));
                }
                continue;
            }
            if self.paid {
                return Pin::new(&mut self.inner).poll_frame(cx);
            }
            match self.size {
                Size::Known(n) => {
                    let acquire = self.acquire(n);
                    self.waiting = Some((None, acquire));
                }
                Size::GrpcPrefix => {
                    let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => frame,
                        other => return Poll::Ready(other),
                    };
                    let declared = frame.data_ref().and_then(|d| {
                        let prefix: [u8; 4] = d.get(1..5)?.try_into().ok()?;
                        Some(u32::from_be_bytes(prefix) as usize + 5)
                    });
                    let acquire = self.acquire(declared.unwrap_or(usize::MAX));
                    self.waiting = Some((Some(frame), acquire));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.paid && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
