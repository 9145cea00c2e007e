//! An agent whose store is on a small, real file system (a tmpfs that answers ENOSPC):
//! its quota is clamped to the file system; a pull bigger than the disk fails at once with
//! a clear error; a disk that fills mid-pull (another writer) fails the pull within
//! seconds, releases the partial blob and makes the agent unready with the reason, while
//! it keeps serving the blobs it holds; once space is back it is ready and pulls again.
//! A build-index table whose commit failed on a full disk works again once space is back.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kraken_node::buildindex::store::TagStore;
use kraken_node::config::NodeRole;
use support::small_fs::SmallFs;
use support::{TestCluster, blob_file};

fn http() -> reqwest::Client {
    // Workspace builds give reqwest's rustls no default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The value of a gauge in a Prometheus text page.
fn gauge(text: &str, name: &str) -> u64 {
    support::metric(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}")) as u64
}

/// Files left in a store directory (`partial/`, `tmp/`).
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// GETs `url`; the status and the body's text.
async fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// GETs a blob and checks it arrives whole.
async fn get_blob(url: &str, want: &[u8]) {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert!(r.bytes().await.unwrap() == want, "{url}: the blob's bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_full_disk_fails_pulls_at_once_releases_them_and_says_it_is_unready() {
    const FS: u64 = 64 << 20;
    let fs = match SmallFs::mount(FS) {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let mut c = TestCluster::new();
    c.add("origin-1", NodeRole::Origin).await;
    c.add("tracker-1", NodeRole::Tracker).await;
    let mut config = c.config("agent-1", NodeRole::Agent);
    config.node.data_dir = fs.path().join("agent-1");
    // Throttled, so the disk can fill while a pull runs (~5 s for the 40 MiB blob).
    config.agent.ingress_bytes_per_sec = 8 << 20;
    // The default quota (100 GiB) and reserve; a short hold after a disk-full error.
    let mut store = config.store_config();
    store.disk_full_hold_secs = 2;
    config.store = Some(store);
    let agent = c.start(config).await;
    c.converge(1).await;
    let node = c.node(agent);
    let cas = node.roles().agent.as_ref().unwrap().cas().clone();
    let cas_root = cas.config().root.clone();
    let registry = node.registry_addr().unwrap();
    let http_addr = node.http_addr().unwrap();
    let blob_url =
        |d: &kraken_storage::Digest| format!("http://{registry}/v2/library/app/blobs/{d}");
    let metrics = || node.metrics().render();

    // The quota in force is what the 64 MiB file system can hold, not 100 GiB.
    let text = metrics();
    assert_eq!(
        gauge(&text, "kraken_store_configured_capacity_bytes"),
        100 << 30
    );
    let effective = gauge(&text, "kraken_store_capacity_bytes");
    assert!(
        effective < FS && effective > FS / 2,
        "effective quota {effective}"
    );
    let (status, body) = get(&format!("http://{http_addr}/ready")).await;
    assert_eq!(status, 200, "{body}");

    // A small blob the agent holds.
    let (path, small) = blob_file(c.dir.path(), "small", 4 << 20, 1);
    let small_bytes = std::fs::read(&path).unwrap();
    c.upload(&path, &small, 4 << 20).await;
    get_blob(&blob_url(&small), &small_bytes).await;

    // A blob bigger than the disk: refused at once, naming the cause.
    let (path, big) = blob_file(c.dir.path(), "big", 96 << 20, 2);
    c.upload(&path, &big, 96 << 20).await;
    let asked = Instant::now();
    let (status, body) = get(&blob_url(&big)).await;
    let took = asked.elapsed();
    assert!(status >= 500, "{status}: {body}");
    assert!(body.contains("no space"), "{body}");
    assert!(took < Duration::from_secs(30), "the error took {took:?}");
    assert!(files_in(&cas_root.join("partial")).is_empty());

    // A blob that fits the quota, while another writer fills the disk mid-pull.
    let (path, mid) = blob_file(c.dir.path(), "mid", 40 << 20, 3);
    c.upload(&path, &mid, 40 << 20).await;
    let mut stream = http().get(blob_url(&mid)).send().await.unwrap();
    let partial = cas_root.join("partial").join(mid.hex());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&partial).map_or(true, |m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512 < 4 << 20
    }) {
        assert!(Instant::now() < deadline, "the pull wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ballast = fs.fill("ballast");
    let filled = Instant::now();
    // The stream ends with an error (or a 5xx if it had not started), within seconds.
    let failed = async {
        if !stream.status().is_success() {
            return format!("status {}", stream.status());
        }
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the blob arrived whole on a full disk"),
                Err(e) => return e.to_string(),
            }
        }
    };
    let why = tokio::time::timeout(Duration::from_secs(30), failed)
        .await
        .expect("the pull failed within 30 s of the disk filling");
    let took = filled.elapsed();
    println!("mid-pull disk full: the stream failed after {took:?}: {why}");
    // The partial blob is released: no file and no quota left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !files_in(&cas_root.join("partial")).is_empty()
        || cas.used_bytes() != small_bytes.len() as u64
    {
        assert!(
            Instant::now() < deadline,
            "partial files {:?}, {} bytes used",
            files_in(&cas_root.join("partial")),
            cas.used_bytes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files_in(&cas_root.join("tmp")).is_empty());
    // A pull asked for now (`krakenctl pull`) fails at once, naming the cause.
    let asked = Instant::now();
    let e = c.pull(agent, &mid).await.unwrap_err();
    assert!(e.contains("no space"), "{e}");
    assert!(asked.elapsed() < Duration::from_secs(30));

    // Unready while the disk is full, with the reason; alive all the same.
    fs.fill("ballast-2");
    let (status, body) = get(&format!("http://{http_addr}/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no space left") || body.contains("reserve"),
        "{body}"
    );
    let (status, _) = get(&format!("http://{http_addr}/health")).await;
    assert_eq!(status, 200);
    assert!(gauge(&metrics(), "kraken_store_disk_full_errors") >= 1);
    assert_eq!(gauge(&metrics(), "kraken_store_can_store"), 0);

    // The blob it holds is still served.
    get_blob(&blob_url(&small), &small_bytes).await;

    // Space back: ready again (after the hold), and pulls that fit succeed.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(fs.path().join("ballast-2")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&format!("http://{http_addr}/ready")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still unready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (path, after) = blob_file(c.dir.path(), "after", 4 << 20, 4);
    let after_bytes = std::fs::read(&path).unwrap();
    c.upload(&path, &after, 4 << 20).await;
    get_blob(&blob_url(&after), &after_bytes).await;
    drop(c);
    drop(fs);
}

/// redb latches a commit that failed for want of space ("Previous I/O error occurred") until
/// the database is reopened: the build-index tables reopen themselves, so tags work again
/// once space is back, without a restart.
#[test]
fn a_build_index_table_works_again_after_a_commit_failed_on_a_full_disk() {
    let fs = match SmallFs::mount(8 << 20) {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let store = TagStore::open(&fs.path().join("tags.redb")).unwrap();
    let digest: kraken_storage::Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    store.put("app", "before", &digest).unwrap();
    let ballast = fs.fill("ballast");
    let long = "x".repeat(120);
    let failed = (0..20_000).any(|i| store.put("app", &format!("{long}-{i}"), &digest).is_err());
    assert!(failed, "tags never ran out of space");
    std::fs::remove_file(&ballast).unwrap();

    store.put("app", "after", &digest).unwrap();
    assert_eq!(store.get("app", "after").unwrap().unwrap().digest, digest);
    assert_eq!(store.get("app", "before").unwrap().unwrap().digest, digest);
}
