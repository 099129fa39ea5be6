//! The state tables' writes, on a thread of their own.
//!
//! The state machine collects the keys each apply changes and, every
//! [`super::state_machine::TABLE_FLUSH_EVERY`], encodes their current values
//! into one sled batch. Applying that batch to sled's tree (its B-tree
//! inserts and page splits) was about a third of the leader's state-machine
//! task at 8,000 runs/s; the task is single-threaded and bounds the run rate.
//! [`TableWriter`] moves the `apply_batch` to a dedicated thread:
//!
//! - batches are applied in the order they were submitted, one at a time;
//! - at most [`QUEUED_BATCHES`] wait; submitting more blocks the state
//!   machine (back-pressure rather than unbounded memory);
//! - [`TableWriter::wait`] returns once everything submitted is applied
//!   (before the tables are rewritten from a snapshot, so an older batch can
//!   never land on top of it);
//! - a failed batch is reported by the next `submit` or `wait`: the tables
//!   can then no longer be trusted and the state machine stops with a
//!   storage error;
//! - dropping the writer applies what is queued and joins the thread.
//!
//! Losing queued batches in a crash is harmless for the same reason a
//! crash between two table writes is: the tables record the log id they
//! reflect, and openraft re-applies the entries after it from the log.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Batches that may wait for the writer before `submit` blocks.
pub const QUEUED_BATCHES: usize = 2;

enum Work {
    Batch(sled::Batch),
    Barrier(SyncSender<()>),
}

/// Applies table batches to one sled tree on its own thread; see the module docs.
pub struct TableWriter {
    work: Option<SyncSender<Work>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl TableWriter {
    /// Starts the writer thread for `tree`.
    pub fn start(tree: sled::Tree) -> std::io::Result<TableWriter> {
        let (work, queue) = sync_channel(QUEUED_BATCHES);
        let failed = Arc::new(Mutex::new(None));
        let thread = std::thread::Builder::new().name("kairos-tables".into()).spawn({
            let failed = failed.clone();
            move || write_all(&tree, &queue, &failed)
        })?;
        Ok(TableWriter {
            work: Some(work),
            thread: Some(thread),
            failed,
        })
    }

    /// Queues `batch`; blocks while [`QUEUED_BATCHES`] are already waiting.
    pub fn submit(&self, batch: sled::Batch) -> Result<(), String> {
        self.check()?;
        self.send(Work::Batch(batch))
    }

    /// Returns once every batch submitted so far is applied.
    pub fn wait(&self) -> Result<(), String> {
        let (done, applied) = sync_channel(1);
        self.send(Work::Barrier(done))?;
        applied
            .recv()
            .map_err(|_| "the table writer stopped".to_string())?;
        self.check()
    }

    fn send(&self, work: Work) -> Result<(), String> {
        self.work
            .as_ref()
            .expect("present until drop")
            .send(work)
            .map_err(|_| "the table writer stopped".to_string())
    }

    fn check(&self) -> Result<(), String> {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(error) => Err(format!("writing the state tables failed: {error}")),
            None => Ok(()),
        }
    }
}

impl Drop for TableWriter {
    /// Applies what is queued, then joins the thread.
    fn drop(&mut self) {
        drop(self.work.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: apply each batch in order until the sender is gone. After a
/// failure nothing more is applied (a later batch must not land on a gap).
fn write_all(tree: &sled::Tree, queue: &Receiver<Work>, failed: &Mutex<Option<String>>) {
    while let Ok(work) = queue.recv() {
        match work {
            Work::Batch(batch) => {
                // The lock is not held while applying: `submit` checks it
                // and must not wait for the batch in progress.
                let lock = || failed.lock().unwrap_or_else(|p| p.into_inner());
                if lock().is_some() {
                    continue;
                }
                if let Err(e) = tree.apply_batch(batch) {
                    tracing::error!("writing the state tables: {e}");
                    *lock() = Some(e.to_string());
                }
            }
            Work::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        (dir, tree)
    }

    fn batch(pairs: &[(&str, &str)]) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in pairs {
            batch.insert(k.as_bytes(), v.as_bytes());
        }
        batch
    }

    fn get(tree: &sled::Tree, key: &str) -> Option<String> {
        tree.get(key)
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn batches_land_in_submission_order_and_wait_sees_them_all() {
        let (_dir, tree) = tree();
        let writer = TableWriter::start(tree.clone()).unwrap();
        for n in 0..200 {
            let value = n.to_string();
            writer
                .submit(batch(&[("k", &value), (&format!("n{n}"), "x")]))
                .unwrap();
        }
        writer.wait().unwrap();
        assert_eq!(get(&tree, "k").as_deref(), Some("199"), "the last batch wins");
        assert_eq!(tree.len(), 201);
    }

    #[test]
    fn dropping_the_writer_applies_what_is_queued() {
        let (_dir, tree) = tree();
        let writer = TableWriter::start(tree.clone()).unwrap();
        for n in 0..50 {
            writer.submit(batch(&[(&format!("n{n}"), "x")])).unwrap();
        }
        drop(writer);
        assert_eq!(tree.len(), 50);
    }

    #[test]
    fn a_failure_is_reported_and_nothing_after_it_is_applied() {
        let (_dir, tree) = tree();
        let writer = TableWriter::start(tree.clone()).unwrap();
        writer.submit(batch(&[("a", "1")])).unwrap();
        writer.wait().unwrap();
        // Simulate a failed apply as the thread would record it.
        *writer.failed.lock().unwrap() = Some("disk full".into());
        let refused = writer.submit(batch(&[("b", "2")])).unwrap_err();
        assert!(refused.contains("disk full"), "{refused}");
        assert!(writer.wait().unwrap_err().contains("disk full"));
        assert_eq!(get(&tree, "b"), None);
    }
}
