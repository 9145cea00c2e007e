//! The S3 backend against a real S3-compatible server (moto on a loopback port, one per
//! test): multipart round trips, ranges, missing blobs, listing, Docker-registry key
//! compatibility, routing, and a server dying mid-upload.
#![cfg(feature = "backends")]
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use kraken_storage::Digest;
use kraken_storage::backend::{
    Backend, BackendConfig, BackendError, KeyLayout, NamespaceRouter, RouterConfig,
    default_http_client,
};
use reqwest::Method;
use support::{Moto, test_data};

const MIB: usize = 1024 * 1024;

fn backend(config: &BackendConfig) -> Backend {
    Backend::new("moto", config, default_http_client().unwrap()).unwrap()
}

async fn read_all(
    backend: &Backend,
    digest: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let stream = backend.get(digest, range).await.unwrap();
    let len = stream.len();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out = chunks.concat();
    assert_eq!(out.len() as u64, len);
    out
}

/// Uploads `data` as a stream of 1 MiB chunks.
async fn put(backend: &Backend, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let written = backend
        .put_stream(&digest, futures::stream::iter(chunks))
        .await
        .unwrap();
    assert_eq!(written, data.len() as u64);
    digest
}

/// The object's ETag as S3 reports it, from a raw HEAD.
async fn etag(moto: &Moto, key: &str) -> String {
    let resp = moto.object(Method::HEAD, key).send().await.unwrap();
    assert!(resp.status().is_success(), "HEAD {key}: {}", resp.status());
    resp.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_round_trips_through_multipart() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let data = test_data(24 * MIB + 123, 1);
    let digest = put(&backend, &data).await;

    // A multipart upload's ETag ends in "-<parts>": 8 MiB parts make four.
    assert!(etag(&moto, &backend.key(&digest)).await.ends_with("-4"));
    assert_eq!(
        backend.stat(&digest).await.unwrap(),
        Some(data.len() as u64)
    );
    let back = read_all(&backend, &digest, None).await;
    assert_eq!(Digest::sha256_of(&back), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_file_uploads_a_local_file() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let data = test_data(10 * MIB + 5, 2);
    let digest = Digest::sha256_of(&data);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&data).unwrap();
    let reopen = |f: &std::fs::File| {
        let mut f = f.try_clone().unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        f
    };

    // A length that disagrees with the file stores nothing.
    let err = backend
        .put_file(&digest, reopen(&file), data.len() as u64 - 1)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::LengthMismatch { .. }), "{err}");
    assert_eq!(backend.stat(&digest).await.unwrap(), None);

    let written = backend
        .put_file(&digest, reopen(&file), data.len() as u64)
        .await
        .unwrap();
    assert_eq!(written, data.len() as u64);
    assert!(etag(&moto, &backend.key(&digest)).await.ends_with("-2"));
    assert_eq!(read_all(&backend, &digest, None).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_is_not_committed() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let data = test_data(9 * MIB, 3);
    let claimed = Digest::sha256_of(b"something else");
    let chunks = futures::stream::iter(
        data.chunks(MIB)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let err = backend.put_stream(&claimed, chunks).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::DigestMismatch { actual, .. } if *actual == Digest::sha256_of(&data)),
        "{err}"
    );
    assert_eq!(backend.stat(&claimed).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let data = test_data(3 * MIB + 17, 4);
    let digest = put(&backend, &data).await;
    let len = data.len() as u64;

    for range in [
        0..100,
        1_000_000..2_500_000,
        len - 100..len,
        0..len,
        len..len,
        7..8,
    ] {
        let got = read_all(&backend, &digest, Some(range.clone())).await;
        assert_eq!(
            got,
            data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    let inverted = std::ops::Range { start: 10, end: 5 };
    for range in [len - 10..len + 1, len + 1..len + 2, inverted] {
        match backend.get(&digest, Some(range.clone())).await {
            Err(BackendError::RangeNotSatisfiable {
                start, end, len: l, ..
            }) => {
                assert_eq!((start, end, l), (range.start, range.end, len));
            }
            other => panic!("{range:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blob() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let digest = Digest::sha256_of(b"never stored");
    let err = backend.get(&digest, None).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::NotFound { backend, digest: d } if backend == "moto" && *d == digest),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("blob {digest} not found in backend \"moto\"")
    );
    assert_eq!(backend.stat(&digest).await.unwrap(), None);
    assert!(!backend.exists(&digest).await.unwrap());
    backend.delete(&digest).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_exists_list_delete() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    assert!(
        backend
            .list()
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );

    let mut digests = Vec::new();
    for i in 0..3 {
        let data = test_data(1000 * (i + 1), 10 + i as u64);
        let digest = put(&backend, &data).await;
        assert_eq!(
            backend.stat(&digest).await.unwrap(),
            Some(data.len() as u64)
        );
        assert!(backend.exists(&digest).await.unwrap());
        digests.push(digest);
    }
    let empty = put(&backend, b"").await;
    assert_eq!(backend.stat(&empty).await.unwrap(), Some(0));
    assert!(read_all(&backend, &empty, None).await.is_empty());
    digests.push(empty);
    digests.sort();

    // Other registry files and malformed keys under the blob prefix are not blobs.
    let hex = digests[0].hex();
    for key in [
        format!("docker/registry/v2/repositories/library/x/_layers/sha256/{hex}/link"),
        format!("docker/registry/v2/blobs/sha256/zz/{hex}/data"),
        "docker/registry/v2/blobs/sha256/ab/not-a-digest/data".to_string(),
    ] {
        let resp = moto
            .object(Method::PUT, &key)
            .body("x")
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    let mut listed: Vec<Digest> = backend.list().await.unwrap().try_collect().await.unwrap();
    listed.sort();
    assert_eq!(listed, digests);

    backend.delete(&digests[1]).await.unwrap();
    assert!(!backend.exists(&digests[1]).await.unwrap());
    let listed: Vec<Digest> = backend.list().await.unwrap().try_collect().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(!listed.contains(&digests[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_blobs_written_by_a_docker_registry() {
    let moto = Moto::start().await;
    let data = test_data(200_000, 5);
    let digest = Digest::sha256_of(&data);
    let hex = digest.hex();
    // Where the distribution registry's S3 driver puts a blob, with
    // `rootdirectory: /registry-root`.
    let key = format!(
        "registry-root/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    );
    let resp = moto
        .object(Method::PUT, &key)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());

    let mut config = moto.backend_config();
    let kraken_storage::backend::ServiceConfig::S3(s3) = &mut config.service else {
        unreachable!()
    };
    s3.root = Some("/registry-root".into());
    assert_eq!(config.layout, KeyLayout::Docker);
    let backend = backend(&config);
    assert_eq!(read_all(&backend, &digest, None).await, data);
    let listed: Vec<Digest> = backend.list().await.unwrap().try_collect().await.unwrap();
    assert_eq!(listed, [digest]);

    // And a blob written through the backend lands at the registry's key.
    let ours = put(&backend, b"pushed by kraken").await;
    let ours_hex = ours.hex();
    let key = format!(
        "registry-root/docker/registry/v2/blobs/sha256/{}/{ours_hex}/data",
        &ours_hex[..2]
    );
    let raw = moto.object(Method::GET, &key).send().await.unwrap();
    assert_eq!(raw.bytes().await.unwrap(), "pushed by kraken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_layout_keys() {
    let moto = Moto::start().await;
    let mut config = moto.backend_config();
    config.layout = KeyLayout::Plain;
    let backend = backend(&config);
    let digest = put(&backend, b"plain").await;
    let raw = moto
        .object(Method::GET, &format!("blobs/sha256/{}", digest.hex()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap(), "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_sends_namespaces_to_their_backends() {
    let moto = Moto::start().await;
    let text = format!(
        r#"
        [[backends]]
        namespace = "library/.*"
        name = "s3-plain"
        backend.layout = "plain"
        backend.s3 = {{ bucket = "{bucket}", endpoint = "{endpoint}", region = "us-east-1", access_key_id = "a", secret_access_key = "s" }}

        [[backends]]
        namespace = ".*"
        name = "s3-docker"
        backend.s3 = {{ bucket = "{bucket}", endpoint = "{endpoint}", region = "us-east-1", access_key_id = "a", secret_access_key = "s" }}
        "#,
        bucket = support::BUCKET,
        endpoint = moto.endpoint(),
    );
    let config = RouterConfig::from_toml_str(&text).unwrap();
    let router = NamespaceRouter::new(&config, default_http_client().unwrap()).unwrap();
    let library = router.route("library/ubuntu").unwrap();
    let other = router.route("team/app").unwrap();
    assert_eq!(library.name(), "s3-plain");
    assert_eq!(other.name(), "s3-docker");

    let digest = put(library, b"routed").await;
    assert!(library.exists(&digest).await.unwrap());
    // Same bucket, different layout: the other route does not see it.
    assert!(!other.exists(&digest).await.unwrap());
}

/// The bucket's in-progress multipart uploads, as moto lists them.
async fn multipart_uploads(moto: &Moto) -> String {
    let uploads = moto
        .raw(Method::GET, &format!("{}?uploads", support::BUCKET))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(uploads.contains("ListMultipartUploadsResult"), "{uploads}");
    uploads
}

async fn wait_for_multipart_upload(moto: &Moto) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !multipart_uploads(moto).await.contains("<UploadId>") {
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dying_mid_upload_fails_the_put_and_stores_nothing() {
    let mut moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let data = test_data(20 * MIB, 6);
    let digest = Digest::sha256_of(&data);

    // The caller produces the blob slowly, one chunk at a time, through a channel.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let upload = tokio::spawn({
        let backend = backend.clone();
        async move { backend.put_stream(&digest, rx).await }
    });
    let mut chunks = data.chunks(MIB).map(Bytes::copy_from_slice);
    // 17 MiB: OpenDAL holds the first 8 MiB part back (the blob might still fit one
    // PUT) and starts the multipart upload when the second part is full.
    for chunk in chunks.by_ref().take(17) {
        tx.send(Ok(chunk)).await.unwrap();
    }
    wait_for_multipart_upload(&moto).await;
    moto.kill();
    // The rest; the upload may already have failed and dropped the receiver.
    for chunk in chunks {
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    drop(tx);

    let result = tokio::time::timeout(std::time::Duration::from_secs(30), upload)
        .await
        .expect("the failed upload returns instead of hanging")
        .expect("the upload task does not panic");
    let err = result.expect_err("upload to a dead server fails");
    assert!(
        matches!(
            err,
            BackendError::Unavailable { op: "write", .. } | BackendError::Io { op: "write", .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"moto\""), "{err}");

    moto.restart().await;
    assert_eq!(backend.stat(&digest).await.unwrap(), None);
    // The same backend works again once the server is back.
    let again = put(&backend, &data[..MIB]).await;
    assert!(backend.exists(&again).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_retryable() {
    let mut moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    moto.kill();
    let err = backend.stat(&Digest::sha256_of(b"x")).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        matches!(err, BackendError::Unavailable { op: "stat", .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_errors_abort_the_upload() {
    let moto = Moto::start().await;
    let backend = backend(&moto.backend_config());
    let digest = Digest::sha256_of(b"whatever");
    let chunks = futures::stream::iter(vec![
        Ok(Bytes::from(vec![0u8; 9 * MIB])),
        Err(std::io::Error::other("peer went away")),
    ]);
    let err = backend.put_stream(&digest, chunks).await.unwrap_err();
    assert!(matches!(err, BackendError::Source { .. }), "{err:?}");
    assert_eq!(
        std::error::Error::source(&err).map(|s| s.to_string()),
        Some("peer went away".to_string())
    );
    assert_eq!(backend.stat(&digest).await.unwrap(), None);
    // The multipart upload was aborted, not left behind.
    let uploads = multipart_uploads(&moto).await;
    assert!(!uploads.contains("<UploadId>"), "{uploads}");
}
