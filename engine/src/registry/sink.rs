//! Streaming a download into the store.
//!
//! The store's [`BlobWriter`](crate::store::BlobWriter) is a blocking
//! `std::io::Write`. A [`BlobSink`] runs it on a blocking thread and feeds it
//! chunks through a small bounded channel, so a layer never sits whole in
//! memory, the async threads never wait on the disk, and a slow disk slows
//! the download down instead of filling memory.

use std::io::Write;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::RegistryError;
use crate::oci::Digest;
use crate::store::{Store, StoreError};

/// Chunks in flight between the network and the disk.
const DEPTH: usize = 8;

pub(crate) struct BlobSink {
    chunks: Option<mpsc::Sender<Msg>>,
    task: tokio::task::JoinHandle<Result<Option<Digest>, RegistryError>>,
}

enum Msg {
    Chunk(Bytes),
    Commit(Digest),
}

impl BlobSink {
    pub(crate) fn new(store: Store) -> Self {
        let (chunks, mut rx) = mpsc::channel::<Msg>(DEPTH);
        let task = tokio::task::spawn_blocking(move || {
            let mut writer = store.blob_writer()?;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Chunk(bytes) => {
                        writer.write_all(&bytes).map_err(|source| match StoreError::disk_full(source) {
                            Ok(full) => RegistryError::Store(full),
                            Err(source) => RegistryError::StoreWrite { source },
                        })?;
                    }
                    Msg::Commit(expected) => {
                        let (digest, _) = writer.commit(Some(&expected))?;
                        return Ok(Some(digest));
                    }
                }
            }
            // The download was abandoned: dropping the writer discards it.
            Ok(None)
        });
        Self { chunks: Some(chunks), task }
    }

    /// Hands a chunk to the writer; waits when the writer is behind.
    pub(crate) async fn write(&mut self, bytes: Bytes) -> Result<(), RegistryError> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(Msg::Chunk(bytes)).await.is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.finish().await.err().unwrap_or_else(stopped_early)) }
    }

    /// Publishes the blob, if its digest is `expected`.
    pub(crate) async fn commit(mut self, expected: &Digest) -> Result<(), RegistryError> {
        let sent = match self.chunks.take() {
            Some(chunks) => chunks.send(Msg::Commit(expected.clone())).await.is_ok(),
            None => false,
        };
        match self.finish().await? {
            Some(_) if sent => Ok(()),
            _ => Err(stopped_early()),
        }
    }

    /// Waits for the writer to end, with its own result.
    async fn finish(&mut self) -> Result<Option<Digest>, RegistryError> {
        self.chunks = None;
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(RegistryError::Internal(format!("the store writer failed: {e}"))),
        }
    }
}

fn stopped_early() -> RegistryError {
    RegistryError::Internal("the store writer stopped early".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest_of;

    #[tokio::test]
    async fn streams_commits_and_discards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut sink = BlobSink::new(store.clone());
        for part in [&b"hello "[..], b"world"] {
            sink.write(Bytes::copy_from_slice(part)).await.expect("write");
        }
        let digest = digest_of(b"hello world");
        sink.commit(&digest).await.expect("commit");
        assert_eq!(store.read_blob(&digest).expect("stored"), b"hello world");

        // A wrong digest stores nothing.
        let mut sink = BlobSink::new(store.clone());
        sink.write(Bytes::from_static(b"other")).await.expect("write");
        let wrong = digest_of(b"not it");
        assert!(matches!(sink.commit(&wrong).await, Err(RegistryError::Store(_))));
        assert!(!store.has_blob(&wrong));
        assert!(!store.has_blob(&digest_of(b"other")));

        // An abandoned sink stores nothing.
        let mut sink = BlobSink::new(store.clone());
        sink.write(Bytes::from_static(b"partial")).await.expect("write");
        drop(sink);
        assert!(!store.has_blob(&digest_of(b"partial")));
    }
}
