//! Feeding bytes that arrive asynchronously (a QUIC stream, a backend read) into the CAS's
//! blocking ingest, which reads from a `std::io::Read` on a blocking thread.
//!
//! [`ChannelReader`] is the blocking end: it reads chunks from a bounded channel, so the
//! async side waits when the disk is slower than the network and memory stays bounded.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// Chunks in flight between the async producer and the blocking reader.
pub const BRIDGE_CHUNKS: usize = 16;

/// A blocking reader over chunks sent on a channel. An `Err` chunk fails the read; the
/// channel closing ends the stream.
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

/// A bounded channel and the reader on its receiving end.
pub fn channel_reader() -> (mpsc::Sender<io::Result<Bytes>>, ChannelReader) {
    let (tx, rx) = mpsc::channel(BRIDGE_CHUNKS);
    (
        tx,
        ChannelReader {
            rx,
            current: Bytes::new(),
        },
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
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
        let (tx, mut reader) = channel_reader();
        let producer = crate::spawn(async move {
            for i in 0..100u8 {
                tx.send(Ok(Bytes::from(vec![i; 1000]))).await.unwrap();
            }
        });
        let all = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            reader.read_to_end(&mut v).unwrap();
            v
        })
        .await
        .unwrap();
        producer.await.unwrap();
        assert_eq!(all.len(), 100_000);
        assert!(all[99_999] == 99 && all[0] == 0);

        let (tx, mut reader) = channel_reader();
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        tx.send(Err(io::Error::other("backend died")))
            .await
            .unwrap();
        let err = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            reader.read_to_end(&mut v).unwrap_err()
        })
        .await
        .unwrap();
        assert!(err.to_string().contains("backend died"));
    }
}
