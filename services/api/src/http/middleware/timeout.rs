//! The handler timeout of the middleware. Generic over the future so it wraps the inner service's
//! call (with its panic catcher) without boxing it a second time.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

/// A timeout whose timer is only armed if the handler does not finish on its first poll: most
/// requests (health checks, cached reads, errors) complete synchronously and never touch the
/// timer wheel, which measurably costs throughput when done for every request.
#[pin_project::pin_project]
pub(super) struct LazyTimeout<F> {
    #[pin]
    fut: F,
    deadline: Instant,
    #[pin]
    sleep: Option<tokio::time::Sleep>,
}

pub(super) struct Elapsed;

impl<F> LazyTimeout<F> {
    pub(super) fn new(fut: F, deadline: Instant) -> Self {
        Self { fut, deadline, sleep: None }
    }
}

impl<F: Future> Future for LazyTimeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.fut.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until((*this.deadline).into())));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}
