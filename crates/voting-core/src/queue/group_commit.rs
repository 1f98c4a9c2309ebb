//! Group commit, shared by both queues: votes are handed to one task, and every vote that
//! arrives while a batch is being written goes into the next one. One write (a Redis
//! pipeline, a SQLite transaction) then carries a whole batch instead of paying a round trip,
//! a system call and a task wake-up per vote. A vote is answered only once its batch is
//! written.

use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::QueueError;
use crate::domain::{QueuePosition, Vote};

/// Most votes written in one batch.
const MAX_BATCH: usize = 512;

/// Writes one batch of votes.
pub(crate) trait BatchWriter: Send + 'static {
    /// One outcome per vote, in order; `Err` when the batch failed as a whole. A vote left
    /// without an outcome (a short reply) is answered as of unknown fate.
    fn write(
        &mut self,
        votes: &[Vote],
    ) -> impl Future<Output = Result<Vec<Result<QueuePosition, QueueError>>, QueueError>> + Send;
}

type Pending = (Vote, oneshot::Sender<Result<QueuePosition, QueueError>>);

/// The handle to a group-commit task, cheap to clone. The task ends at [`GroupCommit::close`],
/// or with the last clone.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    pending: mpsc::Sender<Pending>,
    stop: CancellationToken,
    /// Taken by the first `close`, which waits for the task.
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl GroupCommit {
    /// Starts the task; must be called within a Tokio runtime.
    pub(crate) fn spawn(writer: impl BatchWriter) -> Self {
        let (pending, batches) = mpsc::channel(4 * MAX_BATCH);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_batches(writer, batches, stop.clone()));
        Self { pending, stop, task: Arc::new(Mutex::new(Some(task))) }
    }

    /// Writes what was handed over, then ends the task and waits for it; a panic in it is
    /// logged here. Votes appended afterwards are refused as not recorded.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().expect("group-commit task lock").take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the group-commit task failed");
        }
    }

    /// Queues a vote for the next batch and waits for that batch's outcome.
    pub(crate) async fn append(&self, vote: &Vote) -> Result<QueuePosition, QueueError> {
        let (outcome, reply) = oneshot::channel();
        self.pending
            .send((vote.clone(), outcome))
            .await
            .map_err(|_| QueueError::unavailable(anyhow!("the group-commit task has stopped")))?;
        reply
            .await
            .map_err(|_| QueueError::Indeterminate(anyhow!("the vote's batch ended without an outcome")))?
    }
}

async fn write_batches(
    mut writer: impl BatchWriter,
    mut batches: mpsc::Receiver<Pending>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut votes = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            received = batches.recv_many(&mut batch, MAX_BATCH) => received,
            // Closing refuses new votes; those already sent are still received and written.
            () = stop.cancelled(), if !batches.is_closed() => {
                batches.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        votes.extend(batch.iter().map(|(vote, _)| vote.clone()));
        match writer.write(&votes).await {
            Ok(outcomes) => {
                for ((_, answer), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = answer.send(outcome);
                }
            }
            Err(e) => {
                for (_, answer) in batch.drain(..) {
                    let _ = answer.send(Err(e.same_again()));
                }
            }
        }
        // Dropping what is left (a short reply) answers those votes as of unknown fate.
        batch.clear();
        votes.clear();
    }
}
