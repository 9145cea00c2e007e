//! Feeding bytes that arrive asynchronously (a QUIC stream, a backend read) into the CAS's
//! blocking ingest, which reads from a `std::io::Read` on a blocking thread.
//!
//! [`channel_reader`] gives both ends. The async end ([`BatchSender`]) gathers chunks into
//! batches of [`BATCH_BYTES`] before they cross, so the channel costs one operation (and
//! the blocking end at most one wake-up) per batch, however small the chunks: a QUIC stream
//! yields one per packet, some 120,000 a GiB. Chunks are passed on as they are, not copied.
//! The channel is bounded, so the async side waits when the disk is slower than the network
//! and memory stays at about `BRIDGE_BATCHES × BATCH_BYTES`. The blocking end
//! ([`ChannelReader`]) copies the bytes into the reader's buffer, the one copy on the way.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// Batches in flight between the async producer and the blocking reader.
pub const BRIDGE_BATCHES: usize = 4;

/// Bytes gathered into one batch before it crosses.
pub const BATCH_BYTES: usize = 1 << 20;

/// The reader is gone (the ingest stopped; it says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the blocking reader stopped")]
pub struct ReaderGone;

/// The async end of a [`channel_reader`].
#[derive(Debug)]
pub struct BatchSender {
    tx: mpsc::Sender<io::Result<Vec<Bytes>>>,
    batch: Vec<Bytes>,
    gathered: usize,
}

impl BatchSender {
    /// Adds a chunk, sending the batch once it holds [`BATCH_BYTES`].
    pub async fn push(&mut self, chunk: Bytes) -> Result<(), ReaderGone> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.gathered += chunk.len();
        self.batch.push(chunk);
        if self.gathered >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ReaderGone> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.gathered = 0;
        let batch = std::mem::take(&mut self.batch);
        self.tx.send(Ok(batch)).await.map_err(|_| ReaderGone)
    }

    /// Sends what is gathered; the reader then sees the end of the stream.
    pub async fn finish(mut self) -> Result<(), ReaderGone> {
        self.flush().await
    }

    /// Fails the stream: the reader's next read returns `e` (after what it was sent before,
    /// not what is gathered).
    pub async fn fail(self, e: io::Error) {
        let _ = self.tx.send(Err(e)).await;
    }
}

/// Sends every chunk of `stream` through `tx`, then ends the stream, or fails it with the
/// stream's first error (the ingest reading the other end then stores nothing). Returns
/// the bytes sent; stops early, quietly, if the reader is gone (it says why itself).
pub async fn feed<S, E>(mut stream: S, mut tx: BatchSender) -> u64
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use futures::StreamExt as _;
    let mut fed = 0u64;
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                fed += chunk.len() as u64;
                if tx.push(chunk).await.is_err() {
                    return fed;
                }
            }
            Some(Err(e)) => {
                tx.fail(io::Error::other(e)).await;
                return fed;
            }
            None => {
                let _ = tx.finish().await;
                return fed;
            }
        }
    }
}

/// A blocking reader over batches of chunks sent on a channel. An `Err` fails the read;
/// the channel closing ends the stream.
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<Bytes>>>,
    batch: std::vec::IntoIter<Bytes>,
    current: Bytes,
}

/// A bounded channel: the async end that sends, and the blocking reader on the other.
pub fn channel_reader() -> (BatchSender, ChannelReader) {
    let (tx, rx) = mpsc::channel(BRIDGE_BATCHES);
    (
        BatchSender {
            tx,
            batch: Vec::new(),
            gathered: 0,
        },
        ChannelReader {
            rx,
            batch: Vec::new().into_iter(),
            current: Bytes::new(),
        },
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if let Some(chunk) = self.batch.next() {
                self.current = chunk;
                continue;
            }
            match self.rx.blocking_recv() {
                Some(Ok(batch)) => self.batch = batch.into_iter(),
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_and_errors_cross_the_bridge() {
        let (mut tx, mut reader) = channel_reader();
        let producer = crate::spawn(async move {
            // Small chunks are gathered; a large one crosses in the batch it completes.
            for i in 0..100u8 {
                tx.push(Bytes::from(vec![i; 1000])).await.unwrap();
            }
            tx.push(Bytes::new()).await.unwrap();
            tx.push(Bytes::from(vec![100; BATCH_BYTES])).await.unwrap();
            tx.push(Bytes::from(vec![101; 5])).await.unwrap();
            tx.finish().await.unwrap();
        });
        let all = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            reader.read_to_end(&mut v).unwrap();
            v
        })
        .await
        .unwrap();
        producer.await.unwrap();
        assert_eq!(all.len(), 100_000 + BATCH_BYTES + 5);
        assert!(all[99_999] == 99 && all[0] == 0);
        assert!(all[100_000] == 100 && all[all.len() - 1] == 101);

        let (mut tx, mut reader) = channel_reader();
        tx.push(Bytes::from_static(b"abc")).await.unwrap();
        tx.flush().await.unwrap();
        tx.fail(io::Error::other("backend died")).await;
        let (read, err) = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            let e = reader.read_to_end(&mut v).unwrap_err();
            (v, e)
        })
        .await
        .unwrap();
        assert_eq!(read, b"abc");
        assert!(err.to_string().contains("backend died"));

        // A reader that went away is reported to the sender.
        let (mut tx, reader) = channel_reader();
        drop(reader);
        assert_eq!(
            tx.push(Bytes::from(vec![0; BATCH_BYTES])).await,
            Err(ReaderGone)
        );
    }
}
