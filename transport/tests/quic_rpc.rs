//! RPC over QUIC: bulk bodies both ways, sessions, refusals, and misbehaving peers.

#![cfg(feature = "quic")]
#![allow(clippy::unwrap_used)]

mod quic_support;

use std::sync::Arc;
use std::time::Duration;

use kraken_storage::Digest;
use kraken_transport::quic::{
    PoolConfig, RequestBody, RpcConfig, StreamError, call, codes, read_frame, write_frame,
};
use kraken_transport::wire::{
    MAX_FRAME_LEN, PROTOCOL_VERSION, PeerMessage, StreamHeader, WireError, encode_frame,
};
use quic_support::*;

const MIB: usize = 1024 * 1024;

/// Two nodes, each serving `TestService`, the first connected to the second.
async fn pair(
    rpc_config: RpcConfig,
) -> (
    kraken_transport::quic::ConnectionPool,
    kraken_transport::quic::ConnectionPool,
    kraken_transport::quic::PeerConnection,
    Cluster,
) {
    let cluster = cluster();
    let (a, _) = endpoint(&cluster, "node-a");
    let (b, _) = endpoint(&cluster, "node-b");
    let b_addr = b.local_addr().unwrap();
    let svc = Arc::new(TestService::new());
    let (pool_a, _) = serving_pool(a, PoolConfig::default(), svc.clone(), rpc_config.clone());
    let (pool_b, _) = serving_pool(b, PoolConfig::default(), svc, rpc_config);
    let conn = pool_a.get_or_connect(b_addr).await.unwrap();
    (pool_a, pool_b, conn, cluster)
}

async fn echo(conn: &quinn::Connection, body: RequestBody<'_>, body_len: usize, reply_len: usize) {
    let expected_hash = match &body {
        RequestBody::Bytes(b) => *blake3::hash(b).as_bytes(),
        _ => *blake3::hash(&pattern(body_len, 1)).as_bytes(),
    };
    let (resp, mut body_stream) = call::<_, TestResponse>(
        conn,
        &TestRequest::Echo {
            body_len: body_len as u64,
            reply_len: reply_len as u64,
        },
        body,
    )
    .await
    .unwrap();
    assert_eq!(
        resp,
        TestResponse::Echoed {
            hash: expected_hash,
            len: body_len as u64
        }
    );
    let reply = body_stream.read_to_end(reply_len + 1).await.unwrap();
    assert_eq!(reply.len(), reply_len);
    assert_eq!(reply, pattern(reply_len, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_with_8_mib_bodies_both_ways_on_one_connection() {
    let (pool_a, pool_b, conn, _cluster) = pair(RpcConfig::default()).await;

    // A → B, body from memory.
    within(
        "a to b",
        echo(
            conn.connection(),
            RequestBody::Bytes(pattern(8 * MIB, 1)),
            8 * MIB,
            8 * MIB,
        ),
    )
    .await;

    // B → A on the connection A opened (B accepted it and registered it by peer id).
    let a_id = pool_a.endpoint().peer_id();
    let back = pool_b
        .get(&a_id)
        .expect("b registered the incoming connection");
    assert_eq!(back.peer_id(), a_id);
    let data = pattern(8 * MIB, 1);
    let mut reader: &[u8] = &data;
    within(
        "b to a",
        echo(
            back.connection(),
            RequestBody::Reader(&mut reader),
            8 * MIB,
            8 * MIB,
        ),
    )
    .await;
    assert_eq!(pool_b.connections().len(), 1);
    assert_eq!(pool_a.connections().len(), 1);

    // Small calls still work afterwards, many at once.
    let mut calls = Vec::new();
    for n in 0..32 {
        let c = conn.connection().clone();
        calls.push(tokio::spawn(async move { ping(&c, n).await.unwrap() }));
    }
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), n as u32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_sessions_are_routed() {
    let (_a, _b, conn, _cluster) = pair(RpcConfig::default()).await;
    let err = call::<_, TestResponse>(conn.connection(), &TestRequest::Refuse, RequestBody::None)
        .await
        .unwrap_err();
    assert_eq!(err.rejected_with(), Some(codes::REFUSED), "{err}");

    let (mut send, mut recv) = conn.connection().open_bi().await.unwrap();
    write_frame(
        &mut send,
        &StreamHeader::Session {
            version: PROTOCOL_VERSION,
            digest: Digest::sha256_of(b"blob"),
        },
    )
    .await
    .unwrap();
    let msg: Option<PeerMessage> = within("session", read_frame(&mut recv, MAX_FRAME_LEN))
        .await
        .unwrap();
    assert_eq!(msg, Some(PeerMessage::Complete));
}

/// Opens a stream, writes `bytes` (finishing if asked) and returns the code the server
/// reset the stream with.
async fn reset_code(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> quinn::VarInt {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    match within(
        "reset",
        read_frame::<TestResponse>(&mut recv, MAX_FRAME_LEN),
    )
    .await
    {
        Err(StreamError::Reset { code }) => code,
        other => panic!("expected a reset, got {other:?}"),
    }
}

fn rpc_header() -> Vec<u8> {
    encode_frame(&StreamHeader::Rpc {
        version: PROTOCOL_VERSION,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_closed_alone_and_the_connection_survives() {
    let config = RpcConfig {
        max_bad_streams: 100,
        header_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    let (_a, _b, conn, _cluster) = pair(config).await;
    let c = conn.connection();

    // Oversized: the prefix alone is rejected, nothing else is sent.
    assert_eq!(
        reset_code(c, &u32::MAX.to_be_bytes(), false).await,
        codes::FRAME_TOO_LARGE
    );
    let mut big = rpc_header();
    big.extend(((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
    assert_eq!(reset_code(c, &big, false).await, codes::FRAME_TOO_LARGE);

    // Truncated: a frame announcing 10 bytes, 3 given, end of stream.
    let mut truncated = 10u32.to_be_bytes().to_vec();
    truncated.extend([1, 2, 3]);
    assert_eq!(reset_code(c, &truncated, true).await, codes::TRUNCATED);
    // Truncated prefix, and an empty stream.
    assert_eq!(reset_code(c, &[0, 0], true).await, codes::TRUNCATED);
    assert_eq!(reset_code(c, &[], true).await, codes::TRUNCATED);

    // Garbage payloads: an unknown header kind, trailing bytes, a malformed request.
    let mut unknown = 1u32.to_be_bytes().to_vec();
    unknown.push(7);
    assert_eq!(reset_code(c, &unknown, true).await, codes::UNKNOWN_KIND);
    let mut trailing = rpc_header();
    trailing[3] += 1;
    trailing.push(0);
    assert_eq!(reset_code(c, &trailing, true).await, codes::MALFORMED);
    let mut bad_request = rpc_header();
    bad_request.extend(3u32.to_be_bytes());
    bad_request.extend([0, 0xff, 0xff]);
    let code = reset_code(c, &bad_request, true).await;
    assert!(
        code == codes::MALFORMED || code == codes::UNKNOWN_KIND,
        "{code}"
    );

    // Another protocol version.
    let old = encode_frame(&StreamHeader::Rpc { version: 0 }).unwrap();
    assert_eq!(reset_code(c, &old, true).await, codes::UNSUPPORTED_VERSION);

    // Too slow: half a prefix, then nothing.
    assert_eq!(reset_code(c, &[0, 0], false).await, codes::TIMEOUT);

    // The connection and good streams carry on.
    assert!(conn.is_alive());
    assert_eq!(within("ping", ping(c, 7)).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_bad_streams_close_the_connection() {
    let config = RpcConfig {
        max_bad_streams: 3,
        ..RpcConfig::default()
    };
    let (pool_a, _b, conn, _cluster) = pair(config).await;
    let c = conn.connection();
    assert_eq!(within("ping", ping(c, 1)).await.unwrap(), 1);
    for _ in 0..2 {
        assert_eq!(
            reset_code(c, &u32::MAX.to_be_bytes(), false).await,
            codes::FRAME_TOO_LARGE
        );
    }
    assert!(conn.is_alive());
    let (mut send, _recv) = c.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let reason = within("close", c.closed()).await;
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, codes::CONN_ABUSE)
        }
        other => panic!("expected an application close, got {other}"),
    }
    // The pool notices and would dial afresh.
    assert!(!conn.is_alive());
    let again = within("redial", pool_a.get_or_connect(conn.remote_addr()))
        .await
        .unwrap();
    assert_ne!(again.connection().stable_id(), c.stable_id());
    assert_eq!(
        within("ping", ping(again.connection(), 2)).await.unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_responses_are_rejected_by_the_client() {
    let (_a, _b, conn, _cluster) = pair(RpcConfig::default()).await;
    // A 16-byte cap on the response frame: an Echoed response (32-byte hash) exceeds it.
    let err = kraken_transport::quic::call_with_limit::<_, TestResponse>(
        conn.connection(),
        &TestRequest::Echo {
            body_len: 0,
            reply_len: 0,
        },
        RequestBody::None,
        16,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            kraken_transport::quic::RpcError::Response(StreamError::Wire(
                WireError::FrameTooLarge { .. }
            ))
        ),
        "{err}"
    );
    assert_eq!(within("ping", ping(conn.connection(), 3)).await.unwrap(), 3);
}
