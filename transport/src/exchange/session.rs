//! Session streams: dialling a peer for the blob, taking the sessions that open (the
//! swarm picks one when two cross), and the reader and writer tasks of each, which run in
//! a `session` span carrying the peer.

use std::net::SocketAddr;
use std::time::Instant;

use kraken_storage::Digest;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::task::{BlobTask, Input};
use super::{SESSION_QUEUE, Tracker};
use crate::quic::{
    BiStream, ConnectionPool, PeerConnection, PoolError, StreamError, codes, read_message,
    write_frame,
};
use crate::swarm::{OpenSession, PeerEvent, PeerKind, SessionChoice};
use crate::wire::{MAX_FRAME_LEN, PROTOCOL_VERSION, PeerId, PeerMessage, StreamHeader};

/// One open session with a peer.
pub(super) struct Session {
    /// Tells this session's inputs from those of one it replaced.
    pub(super) sid: u64,
    pub(super) conn: PeerConnection,
    /// The writer task's queue.
    writer: mpsc::Sender<PeerMessage>,
    opened_by_us: bool,
    pub(super) reader: AbortHandle,
}

impl<T: Tracker> BlobTask<T> {
    /// Dials `id` and opens a session in the background; the session (or the failure)
    /// comes back as an input.
    pub(super) fn connect(&self, id: PeerId, addr: SocketAddr) {
        let pool = self.ex.inner.pool.clone();
        let tx = self.tx.clone();
        let digest = self.digest;
        let dial = async move {
            let input = match open_session(&pool, addr, id, digest).await {
                Ok((conn, stream)) => Input::Session {
                    peer: id,
                    conn,
                    stream,
                    outbound: true,
                },
                Err(_) => Input::ConnectFailed { peer: id },
            };
            let _ = tx.send(input).await;
        };
        tokio::spawn(dial.in_current_span());
    }

    /// Closes the session with `id`, if any: its reader stops, and dropping the writer's
    /// queue finishes the stream.
    pub(super) fn close_session(&mut self, id: PeerId) {
        if let Some(s) = self.sessions.remove(&id) {
            s.reader.abort();
        }
        self.forget_requests(id);
    }

    /// Requests to `peer` will not be answered any more (its session ended).
    pub(super) fn forget_requests(&mut self, peer: PeerId) {
        if !self.requested.is_empty() {
            self.requested.retain(|(p, _), _| *p != peer);
        }
    }

    /// Notes when a request leaves (and forgets a cancelled one), for the piece latency.
    fn note_request(&mut self, to: PeerId, msg: &PeerMessage) {
        if self.ex.inner.config.piece_latency.is_none() {
            return;
        }
        match msg {
            PeerMessage::Request(index) => {
                self.requested.insert((to, *index), Instant::now());
            }
            PeerMessage::Cancel(index) => {
                self.requested.remove(&(to, *index));
            }
            _ => {}
        }
    }

    /// Queues `msg` for `to`'s writer. A peer whose queue is full (or whose writer is
    /// gone) is reported `Congested`: the swarm decides what becomes of it.
    pub(super) fn send_message(&mut self, to: PeerId, msg: PeerMessage) {
        self.note_request(to, &msg);
        let refused = self
            .sessions
            .get(&to)
            .is_some_and(|s| s.writer.try_send(msg).is_err());
        if refused {
            self.swarm
                .handle_peer(Instant::now(), PeerEvent::Congested { id: to });
        }
    }

    /// A session with `peer` opened, by us (`outbound`) or by the peer.
    pub(super) fn on_session(
        &mut self,
        now: Instant,
        peer: PeerId,
        conn: PeerConnection,
        stream: BiStream,
        outbound: bool,
    ) {
        if let Some(open) = self.sessions.get(&peer) {
            let open = OpenSession {
                outbound: open.opened_by_us,
                alive: open.conn.is_alive(),
            };
            match self.swarm.handle_second_session(peer, open, outbound) {
                SessionChoice::KeepOpen => {
                    stream.reject(codes::REFUSED);
                    return;
                }
                SessionChoice::TakeNew => self.close_session(peer),
            }
        }
        self.next_sid += 1;
        let sid = self.next_sid;
        let BiStream { send, recv } = stream;
        let (writer, writes) = mpsc::channel(SESSION_QUEUE);
        let span = tracing::info_span!("session", %peer, outbound);
        tokio::spawn(write_session(send, writes).instrument(span.clone()));
        let reader = read_session(recv, peer, sid, self.tx.clone());
        let reader = tokio::spawn(reader.instrument(span)).abort_handle();
        self.sessions.insert(
            peer,
            Session {
                sid,
                conn,
                writer,
                opened_by_us: outbound,
                reader,
            },
        );
        let kind = self.known.get(&peer).map_or(PeerKind::Agent, |(_, k)| *k);
        self.swarm.handle_peer(
            now,
            PeerEvent::Connected {
                id: peer,
                kind,
                outbound,
            },
        );
    }
}

/// Why a session could not be opened (the swarm hears `ConnectFailed` either way).
#[derive(Debug, thiserror::Error)]
enum DialError {
    /// No connection to the peer.
    #[error(transparent)]
    Connect(#[from] PoolError),
    /// The session stream, or its header, failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Dials `id` at `addr` (or reuses the pool's connection) and opens a session for
/// `digest` on it.
#[tracing::instrument(
    name = "dial",
    level = "debug",
    skip_all,
    fields(peer = %id, %addr),
    err(level = "debug")
)]
async fn open_session(
    pool: &ConnectionPool,
    addr: SocketAddr,
    id: PeerId,
    digest: Digest,
) -> Result<(PeerConnection, BiStream), DialError> {
    let conn = pool.connect(addr, Some(id)).await?;
    let (mut send, recv) = conn
        .connection()
        .open_bi()
        .await
        .map_err(StreamError::from)?;
    let header = StreamHeader::Session {
        version: PROTOCOL_VERSION,
        digest,
    };
    write_frame(&mut send, &header).await?;
    Ok((conn, BiStream { send, recv }))
}

/// Writes the queued messages until the queue closes (the session is closed) or a write
/// fails, then finishes the stream.
async fn write_session(mut send: SendStream, mut writes: mpsc::Receiver<PeerMessage>) {
    while let Some(msg) = writes.recv().await {
        if let Err(e) = write_frame(&mut send, &msg).await {
            tracing::debug!(error = %e, "session write failed");
            return;
        }
    }
    let _ = send.finish();
}

/// Turns the session's frames into inputs until it ends or breaks.
async fn read_session(mut recv: RecvStream, peer: PeerId, sid: u64, tx: mpsc::Sender<Input>) {
    loop {
        match read_message::<PeerMessage>(&mut recv, MAX_FRAME_LEN).await {
            Ok(Some(msg)) => {
                if tx.send(Input::Message { peer, sid, msg }).await.is_err() {
                    return;
                }
            }
            end => {
                if let Err(e) = end {
                    tracing::debug!(error = %e, "session read failed");
                }
                let _ = tx.send(Input::SessionEnded { peer, sid }).await;
                return;
            }
        }
    }
}
