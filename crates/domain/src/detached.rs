//! Work that must finish even if whoever waits for it goes away, without a hop to
//! another thread while they wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

/// Runs `work` in the awaiting task; if that task drops this future before `work`
/// finished, what is left of `work` is spawned on `runtime` and finishes there.
pub(crate) struct Detached<'a, F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    work: Option<Pin<Box<F>>>,
    runtime: &'a Handle,
}

impl<'a, F> Detached<'a, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(work: F, runtime: &'a Handle) -> Self {
        Detached {
            work: Some(Box::pin(work)),
            runtime,
        }
    }
}

impl<F> Future for Detached<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(work) = self.work.as_mut() else {
            // Polled after it finished: a caller's bug, and a future may not be
            // resumed after `Ready`.
            return Poll::Pending;
        };
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for Detached<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // The box keeps the future where it is, so it resumes where it stopped.
            self.runtime.spawn(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_dropped_halfway_finishes_on_the_runtime() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let (done, was_done) = tokio::sync::oneshot::channel();
        let work = {
            let finished = finished.clone();
            async move {
                released.await.unwrap();
                finished.store(true, Ordering::SeqCst);
                let _ = done.send(());
            }
        };
        let handle = Handle::current();
        // The waiter gives up while the work waits halfway.
        let waited =
            tokio::time::timeout(Duration::from_millis(20), Detached::new(work, &handle)).await;
        assert!(waited.is_err());
        assert!(!finished.load(Ordering::SeqCst));
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), was_done)
            .await
            .unwrap()
            .unwrap();
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn work_awaited_to_its_end_answers_in_the_caller() {
        let handle = Handle::current();
        assert_eq!(Detached::new(async { 7 }, &handle).await, 7);
    }
}
