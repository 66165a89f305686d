//! The memory that answers waiting for their clients hold. Every batch of a read or a
//! subscription takes its size from one budget (`max_answer_bytes`) when it is queued for
//! its client, and gives it back once the client's connection has taken it. When the budget
//! is spent, the queues that hold more than their share (the budget over the queues open)
//! are stopped: their batches are dropped at once, and their client is told why when it
//! reads on, so that it resumes from the last position it received. A queue within its
//! share waits for room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use annal_core::Error;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How many bytes an answer holds, roughly.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

/// What each open queue holds of the budget besides its answers: its producer's batch
/// being built and read buffers, and its connection's buffers.
pub(crate) const BASE: usize = 1 << 20;

/// An error answer is small.
const ERROR_WEIGHT: usize = 256;

impl<E> Weigh for Result<bytes::Bytes, E> {
    fn weight(&self) -> usize {
        self.as_ref().map_or(ERROR_WEIGHT, bytes::Bytes::len)
    }
}

impl Weigh for Result<annal_proto::ReadResponse, tonic::Status> {
    fn weight(&self) -> usize {
        self.as_ref()
            .map_or(ERROR_WEIGHT, prost::Message::encoded_len)
    }
}

impl Weigh for Result<annal_proto::SubscribeResponse, tonic::Status> {
    fn weight(&self) -> usize {
        self.as_ref()
            .map_or(ERROR_WEIGHT, prost::Message::encoded_len)
    }
}

/// The budget, and every queue that draws on it.
pub(crate) struct Answers {
    budget: Arc<Semaphore>,
    total: usize,
    queues: Mutex<Vec<Weak<dyn Stop>>>,
}

/// What the budget needs of a queue.
trait Stop: Send + Sync {
    /// Bytes its answers hold.
    fn held(&self) -> usize;
    /// Drops its answers and closes it, with the reason its receiver gets.
    fn stop(&self, reason: Error);
}

impl Answers {
    pub fn new(total: usize) -> Arc<Answers> {
        Arc::new(Answers {
            budget: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
            queues: Mutex::new(Vec::new()),
        })
    }

    /// A queue of at most `cap` answers for one client, holding [`BASE`] of the budget for
    /// as long as it is open. Refused when the budget has no room for that, even after the
    /// queues over their share are stopped.
    pub fn open<T: Send + 'static>(
        self: &Arc<Self>,
        cap: usize,
    ) -> Result<(Sender<T>, Receiver<T>), Error> {
        let n = u32::try_from(BASE.min(self.total)).unwrap_or(u32::MAX);
        let base = match Arc::clone(&self.budget).try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                self.stop_over_share();
                Arc::clone(&self.budget)
                    .try_acquire_many_owned(n)
                    .map_err(|_| {
                        Error::Unavailable(format!(
                            "the server's memory for answers (max_answer_bytes, {} bytes) is spent; try again later",
                            self.total
                        ))
                    })?
            }
        };
        let (tx, rx) = self.queue(cap);
        let held = tx.q.hold(base, BASE);
        *tx.q.base.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
        Ok((tx, rx))
    }

    /// Takes `bytes` of the budget for an answer sent outside any queue (a page of a framed
    /// read), waiting at most `wait` for room once the queues over their share are stopped.
    /// Given back when the permit is dropped.
    pub async fn hold(&self, bytes: usize, wait: Duration) -> Result<OwnedSemaphorePermit, Error> {
        let n = u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX);
        if let Ok(p) = Arc::clone(&self.budget).try_acquire_many_owned(n) {
            return Ok(p);
        }
        self.stop_over_share();
        match tokio::time::timeout(wait, Arc::clone(&self.budget).acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Unavailable("the server is shutting down".into())),
            Err(_) => Err(Error::Unavailable(format!(
                "the server's memory for answers (max_answer_bytes, {} bytes) stayed spent for {}; try again later",
                self.total,
                humantime::format_duration(wait)
            ))),
        }
    }

    /// Stops the queues that hold more than their share of the budget.
    fn stop_over_share(&self) -> usize {
        let open: Vec<Arc<dyn Stop>> = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            queues.retain(|w| w.strong_count() > 0);
            queues.iter().filter_map(Weak::upgrade).collect()
        };
        let share = self.total / open.len().max(1);
        for other in &open {
            let held = other.held();
            if held > share {
                crate::metrics::stopped_answers();
                other.stop(Error::Unavailable(format!(
                    "this client fell behind: {held} bytes of answers waited for it, more than its share ({share} bytes) of the server's max_answer_bytes while that ran short; resume from the last position received"
                )));
            }
        }
        share
    }

    fn queue<T: Send + 'static>(self: &Arc<Self>, cap: usize) -> (Sender<T>, Receiver<T>) {
        let q = Arc::new(Queue {
            base: Mutex::new(None),
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                cap: cap.max(1),
                closed: false,
                reason: None,
                waker: None,
            }),
            held: Arc::new(AtomicUsize::new(0)),
            space: Notify::new(),
        });
        let weak: Weak<dyn Stop> = Arc::downgrade(&q) as Weak<dyn Stop>;
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|w| w.strong_count() > 0);
        queues.push(weak);
        drop(queues);
        (
            Sender {
                q: Arc::clone(&q),
                answers: Arc::clone(self),
            },
            Receiver { q },
        )
    }

    /// Room for `bytes` of `q`'s next answer: at once while the budget lasts; once it is
    /// spent, the queues over their share are stopped (`q` too, if it is one of them:
    /// then `Err` with why) and `q` waits for room.
    async fn take(&self, q: &Arc<Queue<impl Send + 'static>>, bytes: usize) -> Result<Held, Error> {
        let n = u32::try_from(bytes.clamp(1, self.total)).unwrap_or(u32::MAX);
        if let Ok(p) = Arc::clone(&self.budget).try_acquire_many_owned(n) {
            return Ok(q.hold(p, bytes));
        }
        self.stop_over_share();
        let closed = q.space.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if let Some(e) = q.closed_why() {
            return Err(e);
        }
        tokio::select! {
            p = Arc::clone(&self.budget).acquire_many_owned(n) => {
                p.map(|p| q.hold(p, bytes))
                    .map_err(|_| Error::Unavailable("the server is shutting down".into()))
            }
            () = q.closed() => Err(q.closed_why().unwrap_or(Error::Closed)),
        }
    }
}

/// An answer's room in the budget, given back when dropped.
pub(crate) struct Held {
    _permit: OwnedSemaphorePermit,
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Bytes that keep their room in the budget for as long as they live (in the connection's
/// buffers, until written).
struct HeldBytes {
    bytes: bytes::Bytes,
    _held: Held,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `bytes`, holding `held` until the last of them is dropped.
pub(crate) fn held_bytes(bytes: bytes::Bytes, held: Held) -> bytes::Bytes {
    bytes::Bytes::from_owner(HeldBytes { bytes, _held: held })
}

struct Inner<T> {
    items: VecDeque<(T, Held)>,
    cap: usize,
    closed: bool,
    /// Why the queue was stopped, for the receiver.
    reason: Option<Error>,
    waker: Option<Waker>,
}

struct Queue<T> {
    /// What the queue holds of the budget while open, for what its producer holds outside
    /// the queue (the batch it builds, its read buffers) and its connection's buffers.
    base: Mutex<Option<Held>>,
    inner: Mutex<Inner<T>>,
    /// Bytes held by its answers, queued or taken and not yet dropped.
    held: Arc<AtomicUsize>,
    /// Woken when an answer is taken, and when the queue closes.
    space: Notify,
}

impl<T> Queue<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hold(&self, permit: OwnedSemaphorePermit, bytes: usize) -> Held {
        self.held.fetch_add(bytes, Ordering::AcqRel);
        Held {
            _permit: permit,
            held: Arc::clone(&self.held),
            bytes,
        }
    }

    fn closed_why(&self) -> Option<Error> {
        let inner = self.lock();
        inner
            .closed
            .then(|| inner.reason.clone().unwrap_or(Error::Closed))
    }

    async fn closed(&self) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().closed {
                return;
            }
            notified.await;
        }
    }

    fn close(&self, reason: Option<Error>) {
        let (items, waker) = {
            let mut inner = self.lock();
            inner.closed = true;
            if inner.reason.is_none() {
                inner.reason = reason;
            }
            (std::mem::take(&mut inner.items), inner.waker.take())
        };
        drop(items);
        if let Some(w) = waker {
            w.wake();
        }
        self.space.notify_waiters();
    }
}

impl<T: Send> Stop for Queue<T> {
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn stop(&self, reason: Error) {
        self.close(Some(reason));
    }
}

/// The producer's end of a queue.
pub(crate) struct Sender<T: Send + 'static> {
    q: Arc<Queue<T>>,
    answers: Arc<Answers>,
}

impl<T: Weigh + Send + 'static> Sender<T> {
    /// Queues an answer once the budget and the queue have room; false once the queue is
    /// closed (its receiver gone, or stopped).
    pub async fn send(&self, item: T) -> bool {
        let Ok(held) = self.answers.take(&self.q, item.weight()).await else {
            return false;
        };
        let mut entry = Some((item, held));
        loop {
            let space = self.q.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut inner = self.q.lock();
                if inner.closed {
                    return false;
                }
                if inner.items.len() < inner.cap {
                    inner.items.push_back(entry.take().expect("pushed once"));
                    if let Some(w) = inner.waker.take() {
                        w.wake();
                    }
                    return true;
                }
            }
            space.await;
        }
    }
}

impl<T: Send + 'static> Sender<T> {
    /// True once the receiver is gone or the queue was stopped.
    pub fn is_closed(&self) -> bool {
        self.q.lock().closed
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        self.q.closed().await
    }

    /// Drops what is queued and closes the queue with `reason`, which the receiver gets.
    pub fn stop(&self, reason: Error) {
        self.q.close(Some(reason));
    }
}

impl<T: Send + 'static> Drop for Sender<T> {
    /// The end: the receiver takes what is queued, then sees the end.
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.q.lock();
            inner.closed = true;
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.q.space.notify_waiters();
    }
}

/// The client's end of a queue: answers, each with its room in the budget; after the last,
/// the reason the queue was stopped, if it was.
pub(crate) struct Receiver<T> {
    q: Arc<Queue<T>>,
}

impl<T> Receiver<T> {
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(T, Held), Error>>> {
        let mut inner = self.q.lock();
        if let Some(item) = inner.items.pop_front() {
            drop(inner);
            self.q.space.notify_one();
            return Poll::Ready(Some(Ok(item)));
        }
        if inner.closed {
            return Poll::Ready(inner.reason.take().map(Err));
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub async fn recv(&mut self) -> Option<Result<(T, Held), Error>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.q.close(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: usize) -> Result<bytes::Bytes, ()> {
        Ok(bytes::Bytes::from(vec![0; n]))
    }

    #[tokio::test]
    async fn a_queue_over_its_share_of_a_spent_budget_is_stopped_and_says_why() {
        let answers = Answers::new(1000 + 2 * BASE);
        let (slow_tx, mut slow_rx) = answers.open(100).unwrap();
        let (fast_tx, mut fast_rx) = answers.open(100).unwrap();
        // The slow client's queue takes 900 bytes and is never read.
        for _ in 0..9 {
            assert!(slow_tx.send(answer(100)).await);
        }
        // The fast one's answers find the budget spent: the slow queue, over its share of
        // 500, is stopped and its memory given back.
        assert!(fast_tx.send(answer(300)).await);
        assert_eq!(fast_rx.recv().await.unwrap().unwrap().0.unwrap().len(), 300);
        assert!(
            !slow_tx.send(answer(1)).await,
            "the stopped queue takes nothing more"
        );
        match slow_rx.recv().await {
            Some(Err(Error::Unavailable(why))) => assert!(why.contains("fell behind"), "{why}"),
            other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
        }
        assert!(slow_rx.recv().await.is_none());
        drop((slow_tx, slow_rx));
        assert_eq!(answers.budget.available_permits(), 1000 + BASE);
    }

    #[tokio::test]
    async fn a_queue_within_its_share_waits_for_room() {
        let answers = Answers::new(1000 + 2 * BASE);
        let (a_tx, mut a_rx) = answers.open(100).unwrap();
        let (b_tx, _b_rx) = answers.open(100).unwrap();
        assert!(a_tx.send(answer(500)).await);
        assert!(b_tx.send(answer(500)).await);
        // Both hold their share: the next answer waits until one is taken.
        let waiting = tokio::spawn(async move { b_tx.send(answer(100)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let (taken, held) = a_rx.recv().await.unwrap().unwrap();
        drop((taken, held));
        assert!(waiting.await.unwrap());
    }
}
