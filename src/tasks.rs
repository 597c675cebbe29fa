//! Background work that shutdown waits for.
//!
//! Every task spawngate starts outside a request (container starts, stops, the
//! culler, the event stream, mail sending…) goes through [`Tasks::spawn`], so
//! shutdown can cancel the long-running loops and then wait for the one-shot work
//! to finish, instead of aborting it half-way (a container created but not
//! recorded, a volume left behind by an offline CLI command).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// A cheap handle (clone it freely) on the process's background tasks.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `work` in the background; [`Tasks::shutdown`] waits for it.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Resolves once shutdown has begun: loops select on it and return.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tells the loops to stop; work already under way, and work spawned until
    /// [`Tasks::shutdown`], still runs and is waited for.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Tells the loops to stop, then waits up to `grace` for every task to end.
    /// Returns how many were still running when the grace ran out.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            return self.tracker.len();
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_one_shot_work_and_stops_loops() {
        let tasks = Tasks::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = go_rx.await;
            let _ = done_tx.send(());
        });
        let looping = tasks.clone();
        tasks.spawn(async move { looping.cancelled().await });
        let waiter = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.shutdown(Duration::from_secs(30)).await }
        });
        // The loop has stopped, but shutdown is still waiting for the one-shot task.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        go_tx.send(()).unwrap();
        assert_eq!(waiter.await.unwrap(), 0);
        assert!(done_rx.await.is_ok(), "the one-shot work ran to its end");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_reports_tasks_that_outlast_the_grace() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        assert_eq!(tasks.shutdown(Duration::from_secs(1)).await, 1);
    }
}
