//! Read barriers share one request to the driver (DESIGN §4a), as writes
//! share an fsync: the reads of every connection that arrive while a batch
//! waits in the driver's queue join it, and the driver registers the batch
//! with the replica as one read. The replica's question (a follower's
//! read index, a leader's heartbeat round) is sent after the driver takes
//! the batch, so it comes after every read in it arrived: one answer serves
//! them all. Without this every read was a message to the driver, a
//! oneshot and a wake-up from the driver's thread (measured here: 0.6-1.5
//! us of a follower's CPU a read more than with the batch; the rest of a
//! follower read's cost is the exchange itself, DESIGN §4a).

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::write_path::CommitError;

/// The batch still open to reads: the one whose request the driver has
/// not taken yet.
#[derive(Default)]
pub struct ReadGate {
    open: Mutex<Option<Arc<ReadBatch>>>,
}

/// Reads waiting for one barrier.
#[derive(Default)]
pub struct ReadBatch {
    answer: OnceLock<Result<(), CommitError>>,
    /// Wakes every read waiting: notified by the first read the answer
    /// woke, on a worker thread, where waking a task is cheap.
    answered: Notify,
    /// Wakes one read: the driver's thread wakes one task, not each (a
    /// wake from outside the runtime can cost a worker's futex).
    first: Notify,
}

/// The driver's hold on a batch: answered once, or refused when dropped
/// unanswered (the driver stopped), so no read waits for ever.
pub struct BatchReply(Arc<ReadBatch>);

/// What [`ReadGate::join`] gave a read.
pub struct Joined {
    pub batch: Arc<ReadBatch>,
    /// This read opened the batch: its connection sends it to the driver.
    pub send: Option<BatchReply>,
}

impl ReadGate {
    /// Joins the open batch, or opens one (then the caller sends
    /// [`Joined::send`] to the driver).
    pub fn join(&self) -> Joined {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(batch) = open.as_ref() {
            return Joined {
                batch: batch.clone(),
                send: None,
            };
        }
        let batch = Arc::new(ReadBatch::default());
        *open = Some(batch.clone());
        Joined {
            send: Some(BatchReply(batch.clone())),
            batch,
        }
    }

    /// Driver, before it registers `reply`'s batch: no read joins it after
    /// this (the next opens another), so every read in it arrived before
    /// the question or round that answers it starts.
    pub fn close(&self, reply: &BatchReply) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_some_and(|b| Arc::ptr_eq(b, &reply.0)) {
            *open = None;
        }
    }
}

impl ReadBatch {
    /// Waits for the batch's answer.
    pub async fn wait(&self) -> Result<(), CommitError> {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            // Registered before the check, so an answer between the two
            // still wakes this read.
            answered.as_mut().enable();
            if let Some(answer) = self.answer.get() {
                return *answer;
            }
            tokio::select! {
                _ = &mut answered => {}
                // The first read woken wakes the others.
                _ = self.first.notified() => self.answered.notify_waiters(),
            }
        }
    }

    fn answer(&self, answer: Result<(), CommitError>) {
        if self.answer.set(answer).is_ok() {
            self.first.notify_one();
        }
    }
}

impl BatchReply {
    /// Answers every read of the batch.
    pub fn send(self, answer: Result<(), CommitError>) {
        self.0.answer(answer);
    }
}

impl Drop for BatchReply {
    fn drop(&mut self) {
        // A no-op once answered.
        self.0.answer(Err(CommitError::Storage));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_join_the_open_batch_until_the_driver_takes_it() {
        let gate = ReadGate::default();
        let first = gate.join();
        let reply = first.send.expect("the first read opens a batch");
        let second = gate.join();
        assert!(second.send.is_none(), "a read joins the open batch");
        assert!(Arc::ptr_eq(&first.batch, &second.batch));
        gate.close(&reply);
        // Taken: a read now is later than the batch's question.
        let third = gate.join();
        assert!(third.send.is_some());
        assert!(!Arc::ptr_eq(&first.batch, &third.batch));
        reply.send(Ok(()));
        assert_eq!(first.batch.wait().await, Ok(()));
        assert_eq!(second.batch.wait().await, Ok(()));
    }

    #[tokio::test]
    async fn an_answer_wakes_every_read_waiting() {
        let gate = Arc::new(ReadGate::default());
        let opened = gate.join();
        let reply = opened.send.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..8 {
            let gate = gate.clone();
            waiting.push(tokio::spawn(async move { gate.join().batch.wait().await }));
        }
        tokio::task::yield_now().await;
        gate.close(&reply);
        reply.send(Err(CommitError::NoLeaderReached));
        for read in waiting {
            assert_eq!(read.await.unwrap(), Err(CommitError::NoLeaderReached));
        }
    }

    #[tokio::test]
    async fn a_batch_the_driver_drops_is_refused() {
        let gate = ReadGate::default();
        let joined = gate.join();
        drop(joined.send);
        assert_eq!(joined.batch.wait().await, Err(CommitError::Storage));
    }
}
