//! Garbage collection end to end on a real cluster (three origins, a tracker, a
//! build-index, an fs backend): exactly the blobs no tag reaches go, from every origin and
//! the backend; a dry run reports the same set and deletes nothing; a push that races a
//! collection keeps every byte; a plan interrupted by a crash is finished on restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use kraken_membership::Role;
use kraken_node::buildindex::BuildIndex;
use kraken_node::config::NodeRole;
use kraken_node::node::Node;
use kraken_node::proto::{GcPhase, GcReport, Request, Response};
use kraken_storage::Digest;
use kraken_storage::backend::{Backend, default_http_client};
use serde_json::json;
use support::{TestCluster, fs_backend};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Gc {
    c: TestCluster,
    bi: usize,
    backend: Backend,
}

/// An image: its manifest and every blob it names.
struct Image {
    manifest: Digest,
    blobs: Vec<Digest>,
}

impl Image {
    fn all(&self) -> BTreeSet<Digest> {
        self.blobs.iter().chain([&self.manifest]).copied().collect()
    }
}

fn descriptor(media_type: &str, d: &Digest) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": d.to_string(), "size": 1})
}

impl Gc {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A cluster whose build-index config `tune` changed.
    async fn with(tune: impl FnOnce(&mut kraken_node::buildindex::BuildIndexConfig)) -> Self {
        let mut c = TestCluster::new();
        for i in 1..=3 {
            c.add(&format!("origin-{i}"), NodeRole::Origin).await;
        }
        c.add("tracker-1", NodeRole::Tracker).await;
        let mut config = c.config("bi-1", NodeRole::BuildIndex);
        tune(&mut config.build_index);
        let bi = c.start(config).await;
        c.converge(3).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.client().view().ring(Role::BuildIndex).is_empty() {
            assert!(Instant::now() < deadline, "no build-index in the view");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let backend = Backend::new(
            "t",
            &fs_backend(&c.backend_root),
            default_http_client().unwrap(),
        )
        .unwrap();
        Gc { c, bi, backend }
    }

    /// Starts node `name` again after a kill. An in-process node's tasks may keep its
    /// databases open after the kill: it restarts on a copy of its files as the kill left
    /// them on disk.
    async fn restart(&mut self, name: &str, role: NodeRole) -> usize {
        let mut config = self.c.config(name, role);
        let copy = self.c.dir.path().join(format!("{name}-restarted"));
        support::copy_dir(&config.node.data_dir, &copy);
        config.node.data_dir = copy;
        let identity = self.c.ca.issue_node_cert(name).unwrap();
        let node = Node::start_with(config, identity, self.c.ca.cluster_ca())
            .await
            .unwrap();
        self.c.nodes.push(Some(node));
        self.c.nodes.len() - 1
    }

    fn build_index(&self) -> &BuildIndex {
        self.c.node(self.bi).roles().build_index.as_ref().unwrap()
    }

    /// Uploads `bytes` and waits until every origin and the backend hold it.
    async fn blob(&self, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let path = self.c.dir.path().join(digest.hex());
        std::fs::write(&path, bytes).unwrap();
        self.c.upload(&path, &digest, bytes.len() as u64).await;
        self.c.wait_replicated(&digest, 3).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every origin's write-back done: a late one would put a purged blob back.
        while !self.backend.exists(&digest).await.unwrap() || self.writebacks_queued() {
            assert!(
                Instant::now() < deadline,
                "{digest} never reached the backend"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        digest
    }

    fn writebacks_queued(&self) -> bool {
        self.c.origins().iter().any(|&i| {
            let origin = self.c.node(i).roles().origin.as_ref().unwrap();
            origin.queue().stats(SystemTime::now()).unwrap().depth > 0
        })
    }

    /// Uploads an image of a config and `layers` (and `subject`, for a referrer).
    async fn image(&self, name: &str, layers: &[Digest], subject: Option<&Digest>) -> Image {
        let config = self
            .blob(json!({"name": name}).to_string().as_bytes())
            .await;
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        });
        if let Some(s) = subject {
            m["subject"] = descriptor(OCI_MANIFEST, s);
        }
        let manifest = self.blob(m.to_string().as_bytes()).await;
        let mut blobs = layers.to_vec();
        blobs.push(config);
        Image { manifest, blobs }
    }

    async fn call(&self, request: Request) -> Response {
        let owner = kraken_node::buildindex::gc::gc_owner(self.c.client()).unwrap();
        let addr = if matches!(request, Request::Gc { .. }) {
            owner.quic_addr
        } else {
            self.c.node(self.bi).quic_addr()
        };
        self.c
            .client()
            .call_within(addr, &request, Duration::from_secs(120))
            .await
            .unwrap()
    }

    async fn tag(&self, tag: &str, digest: &Digest) {
        let request = Request::PutTag {
            repo: "app".into(),
            tag: tag.into(),
            digest: *digest,
            replica: false,
            set_ms: 0,
        };
        assert!(matches!(self.call(request).await, Response::TagPut { .. }));
    }

    async fn untag(&self, tag: &str) {
        let request = Request::DeleteTag {
            repo: "app".into(),
            tag: tag.into(),
            replica: false,
        };
        assert!(matches!(self.call(request).await, Response::TagDeleted));
    }

    async fn gc(&self, dry_run: bool) -> GcReport {
        // Blobs touched in this very millisecond would count as used after a grace of 0.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let request = Request::Gc {
            dry_run,
            grace_ms: Some(0),
            wait_ms: 110_000,
        };
        match self.call(request).await {
            Response::Gc(r) => {
                assert!(
                    matches!(r.phase, GcPhase::Done | GcPhase::Interrupted),
                    "{r:?}"
                );
                r
            }
            other => panic!("{other:?}"),
        }
    }

    /// How many origins, and whether the backend, hold `digest`.
    async fn held(&self, digest: &Digest) -> (usize, bool) {
        let origins = self.c.origins_holding(digest);
        (origins, self.backend.exists(digest).await.unwrap())
    }

    async fn assert_held(&self, digests: &BTreeSet<Digest>) {
        for d in digests {
            assert_eq!(self.held(d).await, (3, true), "{d} must be kept everywhere");
        }
    }

    async fn assert_gone(&self, digests: &BTreeSet<Digest>) {
        for d in digests {
            assert_eq!(
                self.held(d).await,
                (0, false),
                "{d} must be gone everywhere"
            );
        }
    }
}

fn planned(r: &GcReport) -> BTreeSet<Digest> {
    r.planned.iter().map(|(d, _)| *d).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_exactly_the_blobs_only_an_untagged_image_reached() {
    let g = Gc::new().await;
    let shared = g.blob(&[7u8; 20_000]).await;
    let only_a = g.blob(&[1u8; 5_000]).await;
    let only_b = g.blob(&[2u8; 6_000]).await;
    let a = g.image("a", &[shared, only_a], None).await;
    let b = g.image("b", &[shared, only_b], None).await;
    // An untagged signature of a: kept because a is.
    let sig_layer = g.blob(b"signature").await;
    let sig = g.image("sig", &[sig_layer], Some(&a.manifest)).await;
    g.tag("a", &a.manifest).await;
    g.tag("b", &b.manifest).await;
    g.untag("b").await;

    let mut doomed = b.all();
    doomed.remove(&shared);
    let mut live = a.all();
    live.extend(sig.all());

    let dry = g.gc(true).await;
    assert!(dry.dry_run && dry.errors.is_empty(), "{dry:?}");
    assert_eq!(planned(&dry), doomed, "{dry:?}");
    assert_eq!(dry.purged, 0);
    g.assert_held(&doomed).await;
    g.assert_held(&live).await;

    let run = g.gc(false).await;
    assert_eq!(run.phase, GcPhase::Done, "{run:?}");
    assert_eq!(planned(&run), doomed, "{run:?}");
    assert_eq!(run.purged, doomed.len() as u64);
    let bytes: u64 = run.planned.iter().map(|(_, n)| n).sum();
    assert_eq!(run.freed_bytes, bytes);
    assert!(bytes >= 6_000, "{run:?}");
    g.assert_gone(&doomed).await;
    g.assert_held(&live).await;

    // Nothing left to collect.
    let again = g.gc(false).await;
    assert!(again.planned.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_racing_a_gc_keeps_every_byte_it_needs() {
    let g = Gc::new().await;
    let layer = g.blob(&[3u8; 9_000]).await;
    let c = g.image("c", &[layer], None).await;

    // The collection plans while the image is uploaded but not tagged yet...
    let plan = g.build_index().gc_plan_only(0).await;
    assert!(plan.errors.is_empty(), "{plan:?}");
    assert_eq!(planned(&plan), c.all(), "{plan:?}");
    // ...the tag is put (its dependency check marks every blob used)...
    g.tag("c", &c.manifest).await;
    // ...and the sweep, with the guard of the plan's start, keeps them all.
    let run = g.gc(false).await;
    assert!(run.resumed, "{run:?}");
    assert_eq!(run.phase, GcPhase::Done, "{run:?}");
    assert_eq!(
        (run.purged, run.kept_at_sweep),
        (0, c.all().len() as u64),
        "{run:?}"
    );
    g.assert_held(&c.all()).await;

    let next = g.gc(false).await;
    assert!(next.planned.is_empty(), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_left_by_a_crash_is_swept_when_the_build_index_restarts() {
    let mut g = Gc::new().await;
    let layer = g.blob(&[4u8; 3_000]).await;
    let d = g.image("d", &[layer], None).await;
    let plan = g.build_index().gc_plan_only(0).await;
    assert_eq!(planned(&plan), d.all(), "{plan:?}");

    // kill -9 between the plan and the sweep; the node starts again on the same data.
    g.c.kill(g.bi);
    g.bi = g.restart("bi-1", NodeRole::BuildIndex).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = Vec::new();
        for x in d.all() {
            let held = g.held(&x).await;
            if held != (0, false) {
                left.push((x, held));
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never swept: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_stopped_by_a_failing_backend_is_finished_by_the_next_run() {
    let g = Gc::new().await;
    let layer = g.blob(&[5u8; 4_000]).await;
    let e = g.image("e", &[layer], None).await;

    // The backend fails (its root is not a directory): every purge stops at its backend
    // stage, the run reports it and keeps the plan.
    let aside = g.c.dir.path().join("backend-aside");
    std::fs::rename(&g.c.backend_root, &aside).unwrap();
    std::fs::write(&g.c.backend_root, b"not a directory").unwrap();
    let run = g.gc(false).await;
    assert_eq!(run.phase, GcPhase::Interrupted, "{run:?}");
    assert_eq!(planned(&run), e.all(), "{run:?}");
    assert_eq!(run.errors.len(), e.all().len(), "{run:?}");
    assert_eq!(run.purged, 0, "{run:?}");

    // Back to normal: the next run resumes the plan (same cutoff) and finishes it.
    std::fs::remove_file(&g.c.backend_root).unwrap();
    std::fs::rename(&aside, &g.c.backend_root).unwrap();
    let done = g.gc(false).await;
    assert!(done.resumed && done.errors.is_empty(), "{done:?}");
    assert_eq!((done.run_id, done.cutoff_ms), (run.run_id, run.cutoff_ms));
    assert_eq!(done.phase, GcPhase::Done, "{done:?}");
    assert_eq!(done.purged, e.all().len() as u64, "{done:?}");
    g.assert_gone(&e.all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_collection_sweeps_without_being_asked() {
    let g = Gc::with(|bi| {
        bi.gc_interval_secs = 1;
        // Long enough that a run between the upload and the tag below keeps the blob.
        bi.gc_grace_secs = 2;
    })
    .await;
    let kept = g.blob(b"tagged").await;
    g.tag("v1", &kept).await;
    let gone = g.blob(b"untagged").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.held(&gone).await != (0, false) {
        assert!(
            Instant::now() < deadline,
            "the schedule never collected {gone}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.assert_held(&[kept].into()).await;
}
