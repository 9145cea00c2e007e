//! Piece streams: verified round trips, and every way a piece can be wrong.

#![cfg(feature = "quic")]
#![allow(clippy::unwrap_used)]

mod quic_support;

use std::sync::Arc;

use bytes::Bytes;
use kraken_storage::{Digest, Metainfo, PieceIndex, PieceLengthTable};
use kraken_transport::quic::{
    ConnectionPool, PeerConnection, PieceStreamError, PoolConfig, RpcConfig, codes, send_piece,
    write_frame,
};
use kraken_transport::wire::PieceHeader;
use quic_support::*;
use tokio::sync::mpsc;

struct Setup {
    _cluster: Cluster,
    _a: ConnectionPool,
    _b: ConnectionPool,
    conn: PeerConnection,
    data: Bytes,
    metainfo: Metainfo,
    received: mpsc::UnboundedReceiver<PieceResult>,
}

/// A sends pieces of a 5 MiB + 1234-byte blob (1 MiB pieces, a short last one) to B, which
/// verifies them against the metainfo and reports what it got.
async fn setup() -> Setup {
    let data = pattern(5 * 1024 * 1024 + 1234, 9);
    let metainfo = Metainfo::from_bytes(&data, &PieceLengthTable::uniform(1 << 20)).unwrap();
    assert_eq!(metainfo.piece_count(), 6);
    let cluster = cluster();
    let (a, _) = endpoint(&cluster, "node-a");
    let (b, _) = endpoint(&cluster, "node-b");
    let b_addr = b.local_addr().unwrap();
    let (tx, received) = mpsc::unbounded_channel();
    let service = TestService {
        metainfo: Some(metainfo.clone()),
        pieces: Some(tx),
        ..TestService::new()
    };
    let rpc = RpcConfig {
        max_bad_streams: 100,
        ..RpcConfig::default()
    };
    let (pool_b, _) = serving_pool(b, PoolConfig::default(), Arc::new(service), rpc.clone());
    let (pool_a, _) = serving_pool(a, PoolConfig::default(), Arc::new(TestService::new()), rpc);
    let conn = pool_a.get_or_connect(b_addr).await.unwrap();
    Setup {
        _cluster: cluster,
        _a: pool_a,
        _b: pool_b,
        conn,
        data,
        metainfo,
        received,
    }
}

fn piece(s: &Setup, index: u32) -> (PieceHeader, Bytes) {
    let range = s.metainfo.piece_range(PieceIndex(index)).unwrap();
    let bytes = s.data.slice(range.start as usize..range.end as usize);
    let header = PieceHeader {
        digest: *s.metainfo.digest(),
        index: PieceIndex(index),
        len: bytes.len() as u32,
    };
    (header, bytes)
}

async fn next(s: &mut Setup) -> PieceResult {
    within("piece", s.received.recv()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_piece_round_trips_verified() {
    let mut s = setup().await;
    let mut sends = Vec::new();
    for i in 0..s.metainfo.piece_count() {
        let (header, bytes) = piece(&s, i);
        let conn = s.conn.connection().clone();
        sends.push(tokio::spawn(async move {
            send_piece(&conn, header, bytes).await
        }));
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
    let mut got = vec![None; s.metainfo.piece_count() as usize];
    for _ in 0..got.len() {
        let (header, bytes) = next(&mut s).await.unwrap();
        got[header.index.0 as usize] = Some(bytes);
    }
    let joined: Vec<u8> = got.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
    assert_eq!(joined, s.data);
}

/// Loopback carries 64 KiB datagrams, so path MTU discovery takes packets past Ethernet's
/// 1,452 bytes, up to the configured cap, while pieces flow; and batched sends of
/// datagrams that large still go through (10 of them would be more than Linux takes in one
/// send: the endpoint's socket splits the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mtu_discovery_grows_packets_where_the_path_allows() {
    let s = setup().await;
    let cap = loopback_config().max_udp_payload;
    assert!(cap > 6500, "the default cap is a jumbo frame, not {cap}");
    let conn = s.conn.connection().clone();
    let send_one = || async {
        let (header, bytes) = piece(&s, 0);
        send_piece(&conn, header, bytes).await.unwrap();
    };
    within("path MTU discovery up to the cap", async {
        loop {
            send_one().await;
            let mtu = conn.stats().path.current_mtu;
            assert!(mtu <= cap, "discovered {mtu}, above the cap {cap}");
            if mtu == cap {
                break;
            }
        }
    })
    .await;

    let before = conn.stats().udp_tx;
    for _ in 0..16 {
        send_one().await;
    }
    let after = conn.stats().udp_tx;
    let (datagrams, sends) = (after.datagrams - before.datagrams, after.ios - before.ios);
    assert!(
        datagrams > sends,
        "{datagrams} datagrams in {sends} sends: none batched"
    );
    assert_eq!(conn.stats().path.black_holes_detected, 0);
    assert_eq!(conn.stats().path.current_mtu, cap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_piece_is_detected_and_never_returned() {
    let mut s = setup().await;
    let (header, bytes) = piece(&s, 2);
    let mut corrupt = bytes.to_vec();
    corrupt[777] ^= 1;
    send_piece(s.conn.connection(), header, Bytes::from(corrupt))
        .await
        .unwrap();
    let (err, fault) = next(&mut s).await.unwrap_err();
    assert!(err.contains("HashMismatch"), "{err}");
    assert!(fault);

    // The connection still carries good pieces.
    let (header, bytes) = piece(&s, 5);
    send_piece(s.conn.connection(), header, bytes.clone())
        .await
        .unwrap();
    assert_eq!(next(&mut s).await.unwrap(), (header, bytes));
}

/// Opens a piece stream, writes a header and `body`, and returns what the receiver made of
/// it and the code it stopped the stream with.
async fn raw_piece(
    s: &mut Setup,
    header: PieceHeader,
    body: &[u8],
    finish: bool,
) -> (String, Option<quinn::VarInt>) {
    let mut send = s.conn.connection().open_uni().await.unwrap();
    write_frame(&mut send, &header).await.unwrap();
    let _ = send.write_all(body).await;
    if finish {
        let _ = send.finish();
    }
    let (err, fault) = next(s).await.unwrap_err();
    assert!(fault, "{err}");
    let code = within("stop", send.stopped()).await.unwrap();
    (err, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_checked_before_the_body_is_read() {
    let mut s = setup().await;
    let (good, bytes) = piece(&s, 1);

    // The body never comes and the stream stays open: the header alone is refused.
    let wrong_len = PieceHeader {
        len: good.len + 1,
        ..good
    };
    let (err, code) = raw_piece(&mut s, wrong_len, &[], false).await;
    assert!(err.contains("WrongSize"), "{err}");
    assert_eq!(code, Some(codes::BAD_PIECE));

    let out_of_range = PieceHeader {
        index: PieceIndex(6),
        ..good
    };
    let (err, code) = raw_piece(&mut s, out_of_range, &[], false).await;
    assert!(err.contains("OutOfRange"), "{err}");
    assert_eq!(code, Some(codes::BAD_PIECE));

    let other_blob = PieceHeader {
        digest: Digest::sha256_of(b"another blob"),
        ..good
    };
    let (err, code) = raw_piece(&mut s, other_blob, &[], false).await;
    assert!(err.contains("WrongBlob"), "{err}");
    assert_eq!(code, Some(codes::BAD_PIECE));

    // Too few bytes, then the end of the stream.
    let (err, code) = raw_piece(&mut s, good, &bytes[..1000], true).await;
    assert!(err.contains("Truncated"), "{err}");
    // A stream the sender finished and the receiver read to its end cannot be stopped
    // any more; the stop code only arrives if the stream was still open.
    assert!(matches!(code, None | Some(codes::TRUNCATED)), "{code:?}");

    // The right bytes and one more.
    let mut longer = bytes.to_vec();
    longer.push(0);
    let (err, code) = raw_piece(&mut s, good, &longer, true).await;
    assert!(err.contains("TrailingBytes"), "{err}");
    assert!(matches!(code, None | Some(codes::BAD_PIECE)), "{code:?}");

    // A garbage header.
    let mut send = s.conn.connection().open_uni().await.unwrap();
    send.write_all(&5000u32.to_be_bytes()).await.unwrap();
    let (err, fault) = next(&mut s).await.unwrap_err();
    assert!(err.contains("FrameTooLarge") && fault, "{err}");
    assert_eq!(
        within("stop", send.stopped()).await.unwrap(),
        Some(codes::FRAME_TOO_LARGE)
    );

    // A sender whose header disagrees with its bytes is stopped before sending.
    assert!(matches!(
        send_piece(s.conn.connection(), wrong_len, bytes.clone()).await,
        Err(PieceStreamError::LengthMismatch { .. })
    ));

    // And the connection is fine.
    send_piece(s.conn.connection(), good, bytes.clone())
        .await
        .unwrap();
    assert_eq!(next(&mut s).await.unwrap(), (good, bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_given_up_midway_is_not_the_senders_fault() {
    let mut s = setup().await;
    let (header, bytes) = piece(&s, 0);
    // 1 MiB at 64 KiB/s: the sender's own deadline cuts it short after some chunks. Quinn
    // would finish a dropped stream, which reads as a truncated (faulty) piece; it must be
    // reset instead, so the receiver drops it without blaming the peer.
    let slow = kraken_transport::limit::RateLimiter::new(64 * 1024, 64 * 1024).unwrap();
    let send = kraken_transport::quic::send_piece_limited(
        s.conn.connection(),
        header,
        bytes.clone(),
        Some(&slow),
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), send)
            .await
            .is_err()
    );
    let (err, fault) = next(&mut s).await.unwrap_err();
    assert!(!fault, "blamed the sender: {err}");
    assert!(err.contains("Reset"), "{err}");

    // The connection still carries pieces.
    send_piece(s.conn.connection(), header, bytes.clone())
        .await
        .unwrap();
    assert_eq!(next(&mut s).await.unwrap(), (header, bytes));
}
