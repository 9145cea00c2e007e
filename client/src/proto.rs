//! The node RPC protocol: every request one node (or `krakenctl`) makes of another, and
//! their answers.
//!
//! Each call is one [`Request`] frame on a fresh bidirectional stream (see
//! `kraken_transport::quic::rpc`), answered by one [`Response`] frame; bulk bytes (an
//! upload's body, a download's content, a metainfo) follow their frame raw. Errors are
//! answers too: [`Response::Error`] carries a [`RemoteError`] whose kind a caller can act
//! on (try the next owner, retry later, give up).

use std::net::SocketAddr;
use std::time::Duration;

use kraken_storage::Digest;
use kraken_transport::swarm::{PeerInfo, SwarmStats};
use serde::{Deserialize, Serialize};

mod collect;
mod replicas;

pub use collect::{BlobEntry, GC_KEY, GcPhase, GcReport, PurgeStage, Purged};
pub use replicas::{
    BucketSum, MAX_DIGEST_PAGE, MAX_REPORTED_DIGESTS, RepairReport, ReplicaStatus, SUMMARY_BUCKETS,
};

/// The namespace used when a caller names none (`krakenctl push` without `--namespace`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest an origin holds a metainfo request open while it reads a blob through from its
/// backend, before answering [`Response::Pending`].
pub const MAX_METAINFO_WAIT: Duration = Duration::from_secs(30);

/// A request to a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Any node: is it up, and what is it.
    Ping,
    /// Ring nodes: the cluster view, encoded (agents and `krakenctl` refresh from it).
    ClusterView,
    /// Tracker: `peer` holds `have_bytes` of `digest`; answer with peers to try.
    Announce {
        /// The blob.
        digest: Digest,
        /// The announcer, as others should dial it.
        peer: PeerInfo,
        /// Bytes it has verified.
        have_bytes: u64,
    },
    /// Tracker: the blob's metainfo (fetched from its origins and cached).
    Metainfo {
        /// Routes a read-through on the origins to a backend.
        namespace: String,
        /// The blob.
        digest: Digest,
    },
    /// Tracker: what it knows of a blob's peers (operators).
    Peers {
        /// The blob.
        digest: Digest,
    },
    /// Origin: the blob's metainfo; an owner that lacks the blob reads it through from the
    /// backend, holding the request open up to `wait_ms`.
    OriginMetainfo {
        /// Routes the read-through.
        namespace: String,
        /// The blob.
        digest: Digest,
        /// How long to wait for a read-through before answering [`Response::Pending`].
        wait_ms: u64,
    },
    /// Origin: what it holds of a blob.
    BlobStat {
        /// The blob.
        digest: Digest,
    },
    /// Origin: how many bytes of an interrupted upload it holds (resume from there).
    UploadStatus {
        /// The blob.
        digest: Digest,
    },
    /// Origin: upload bytes `offset..` of a blob of `length` bytes; the body follows.
    Upload {
        /// Routes the write-back.
        namespace: String,
        /// The blob; checked before commit.
        digest: Digest,
        /// Where the body starts; must equal what the origin already holds.
        offset: u64,
        /// The blob's whole length.
        length: u64,
        /// Sent by another owner: store it, but do not replicate further.
        replica: bool,
        /// The sender's copy is already in the backend: no write-back needed.
        persisted: bool,
    },
    /// Origin or agent: the bytes `offset..offset+len` of a complete blob (`len` 0: to the
    /// end); the content follows the response.
    Download {
        /// The blob.
        digest: Digest,
        /// First byte.
        offset: u64,
        /// Bytes wanted (0: all from `offset`).
        len: u64,
    },
    /// Origin: the write-back queue's depth and oldest item. Kept for older `krakenctl`s;
    /// [`Request::WriteBackQueue`] also says what is due.
    WriteBackStatus,
    /// Agent: download the blob through the swarm (if needed) and report the pull.
    Pull {
        /// Routes a read-through on the origins.
        namespace: String,
        /// The blob.
        digest: Digest,
    },
    /// Agent: the report of its last pull of a blob.
    PullReport {
        /// The blob.
        digest: Digest,
    },
    /// Build-index: point `repo:tag` at `digest` (after checking that the digest and
    /// everything it references exist in the origins, unless `replica`). Answered
    /// [`Response::TagPut`]; a replica older than the receiver's own setting is refused
    /// with [`Response::Tag`], that setting, for the sender to adopt.
    PutTag {
        /// Repository name.
        repo: String,
        /// Tag.
        tag: String,
        /// Target.
        digest: Digest,
        /// Sent by another owner: store it, do not re-check or re-replicate to owners.
        replica: bool,
        /// For a replica: when the owner that took the client's put set the tag (ms since
        /// the epoch); the later setting wins. Ignored otherwise (0).
        set_ms: u64,
    },
    /// Build-index: what `repo:tag` points at.
    GetTag {
        /// Repository name.
        repo: String,
        /// Tag.
        tag: String,
    },
    /// Build-index: a page of a repository's tags, sorted.
    ListTags {
        /// Repository name.
        repo: String,
        /// Start after this tag.
        after: Option<String>,
        /// Page size (capped by the node).
        limit: u32,
    },
    /// Build-index: a page of repository names, sorted (the catalog).
    ListRepos {
        /// Start after this name.
        after: Option<String>,
        /// Page size (capped by the node).
        limit: u32,
    },
    /// Build-index: every digest a tag has pointed at.
    TagHistory {
        /// Repository name.
        repo: String,
        /// Tag.
        tag: String,
    },
    /// Build-index: pending replications per destination.
    ReplicationStatus,
    /// Build-index: remove `repo:tag` (the blobs stay; other owners and the backend follow).
    DeleteTag {
        /// Repository name.
        repo: String,
        /// Tag.
        tag: String,
        /// Sent by another owner: do not replicate further.
        replica: bool,
    },
    /// Origin: store a whole blob of `length` bytes, streamed straight into the store (no
    /// staging, not resumable: a broken body stores nothing and is sent again from 0).
    /// The origin answers [`Response::Proceed`] and then reads the body, or answers at once
    /// (an error, or [`Response::Uploaded`] when it already holds the blob); after the body,
    /// [`Response::Uploaded`] once the blob is verified, durable and its write-back queued.
    Ingest {
        /// Routes the write-back.
        namespace: String,
        /// The blob; the body must hash to it.
        digest: Digest,
        /// The body's exact length.
        length: u64,
        /// Sent by another owner: store it, but do not replicate further.
        replica: bool,
        /// The sender's copy is already in the backend: no write-back needed.
        persisted: bool,
    },
    /// Origin: hold `digest` (reading it through from the backend routed by `namespace`
    /// if this owner lacks it, holding the request open up to `wait_ms`), and say what it
    /// references if it is a manifest or an index: preheating walks an image with it.
    /// A node that does not own the blob answers `WrongNode`.
    Warm {
        /// Routes the read-through.
        namespace: String,
        /// The blob.
        digest: Digest,
        /// How long to wait for a read-through before answering [`Response::Pending`].
        wait_ms: u64,
    },
    /// Build-index: list the manifest `digest` of `repo` among the referrers of `subject`
    /// (durable before [`Response::ReferrerPut`]). Sent to the first live owner of
    /// `(repo, subject)`, which copies it to the other live owners (`replica`).
    PutReferrer {
        /// Repository name.
        repo: String,
        /// The manifest the referrer's `subject` names.
        subject: Digest,
        /// The referrer manifest.
        digest: Digest,
        /// Its descriptor as the referrers API lists it (a JSON object).
        descriptor: String,
        /// Sent by another owner: do not copy further.
        replica: bool,
    },
    /// Build-index: the referrers of `subject` in `repo` this node holds
    /// ([`Response::Referrers`]).
    Referrers {
        /// Repository name.
        repo: String,
        /// The subject.
        subject: Digest,
    },
    /// Build-index: forget the referrer `digest` of `subject` in `repo` (absent is fine).
    DeleteReferrer {
        /// Repository name.
        repo: String,
        /// The subject.
        subject: Digest,
        /// The referrer manifest.
        digest: Digest,
    },
    /// Origin: a page of the complete blobs its store holds, ordered by digest (garbage
    /// collection's inventory).
    ListBlobs {
        /// Start after this digest.
        after: Option<Digest>,
        /// Page size (capped by the node).
        limit: u32,
    },
    /// Origin: record that these blobs were used now, for those it holds (a tag's
    /// dependency check: garbage collection keeps blobs used after it started).
    TouchBlobs {
        /// The blobs.
        digests: Vec<Digest>,
    },
    /// Build-index: a page of its whole tag table (every repository's tags, with their
    /// digests), ordered by `(repo, tag)`: garbage collection's roots.
    ListTagTable {
        /// Start after this `(repo, tag)`.
        after: Option<(String, String)>,
        /// Page size (capped by the node).
        limit: u32,
    },
    /// Build-index, on the owner of [`GC_KEY`]: run a garbage collection (or resume the
    /// interrupted one, or join the one running), waiting up to `wait_ms` for it to end.
    Gc {
        /// Mark and plan only: delete nothing, store no plan.
        dry_run: bool,
        /// Blobs used within this many ms before the run started are kept (`None`: the
        /// node's `gc_grace_secs`).
        grace_ms: Option<u64>,
        /// How long to hold the request open; the answer says whether the run ended.
        wait_ms: u64,
    },
    /// Build-index: the report of run `run_id` (running or the last one that ended),
    /// waiting up to `wait_ms` for it to end.
    GcStatus {
        /// The run.
        run_id: u64,
        /// How long to hold the request open.
        wait_ms: u64,
    },
    /// Origin: one stage of purging a blob (see [`PurgeStage`]). Idempotent: a blob the
    /// origin lacks is already purged. Answered by [`Response::Purged`].
    PurgeBlob {
        /// The blob.
        digest: Digest,
        /// Keep the blob where it was written or used at or after this time (ms since the
        /// epoch): how garbage collection never races a push. `None`: remove it anyway.
        unused_since_ms: Option<u64>,
        /// Which copies go.
        stage: PurgeStage,
    },
    /// Tracker: forget the blob's peers and its cached metainfo (it was purged).
    ForgetBlob {
        /// The blob.
        digest: Digest,
    },
    /// Build-index: record, durably, that `digest` was purged at `deleted_ms` (agents
    /// poll these tombstones and evict their copies). An owner forwards it to the digest's
    /// other build-index owners unless `replica`.
    RecordTombstone {
        /// The blob.
        digest: Digest,
        /// When it was purged (ms since the epoch).
        deleted_ms: u64,
        /// Sent by another owner: store it, do not forward.
        replica: bool,
    },
    /// Build-index: the blob tombstones this node holds recorded at or after `since_ms`,
    /// oldest first, at most `limit`. Answered by [`Response::Tombstones`].
    Tombstones {
        /// Inclusive lower bound (ms since the epoch, this node's clock).
        since_ms: u64,
        /// Page size (capped by the node).
        limit: u32,
    },
    /// Build-index: `repo` links `digests` (it pushed them, mounted them, or a manifest it
    /// stored reaches them). The node stores the digests it owns and forwards the rest, one
    /// call per owner, unless `replica`. Answered by [`Response::Linked`].
    LinkBlobs {
        /// Repository name.
        repo: String,
        /// The blobs and manifests.
        digests: Vec<Digest>,
        /// Sent by another owner: store them all, do not forward.
        replica: bool,
    },
    /// Build-index: link the closure of manifest `digest` (itself, and every blob and child
    /// manifest it reaches) to `repo`, as a manifest PUT by digest does.
    LinkManifest {
        /// Repository name.
        repo: String,
        /// The manifest.
        digest: Digest,
    },
    /// Build-index: which repositories link `digest` (this node's records; with
    /// `gather`, the union over the digest's live owners). Answered by
    /// [`Response::Linkers`].
    Linkers {
        /// The blob.
        digest: Digest,
        /// Ask the other owners too and answer the union.
        gather: bool,
    },
    /// Build-index: remove `repo`'s link to `digest` here and (unless `replica`) on the
    /// digest's other live owners. Answered by [`Response::Unlinked`].
    UnlinkBlob {
        /// Repository name.
        repo: String,
        /// The blob.
        digest: Digest,
        /// Sent by another owner: remove it here only.
        replica: bool,
    },
    /// Origin (anti-entropy): the summary, per bucket of the digest space, of the complete
    /// blobs it holds whose owners include both it and origin `with`. Answered by
    /// [`Response::ReplicaSummary`] ([`SUMMARY_BUCKETS`] entries).
    ReplicaSummary {
        /// The asking origin's node id.
        with: String,
    },
    /// Origin (anti-entropy): a page of those blobs whose bucket is in `buckets`, ordered
    /// by digest. Answered by [`Response::ReplicaDigests`].
    ReplicaDigests {
        /// The asking origin's node id.
        with: String,
        /// The buckets (first byte of the hash).
        buckets: Vec<u8>,
        /// Start after this digest.
        after: Option<Digest>,
        /// Page size (capped at [`MAX_DIGEST_PAGE`]).
        limit: u32,
    },
    /// Origin: run an anti-entropy pass now (`digest` `None`), or bring one digest to each
    /// of its owners (pushed by the origins that hold it; read through from the backend
    /// routed by `namespace` by its first answering owner if no origin does). Answered by
    /// [`Response::Repaired`].
    Repair {
        /// The blob, or every blob this origin holds.
        digest: Option<Digest>,
        /// Routes a read-through.
        namespace: String,
    },
    /// Origin: what its last anti-entropy pass found. Answered by
    /// [`Response::ReplicaStatus`].
    ReplicaStatus,
    /// Origin: a peer received a piece of `digest` from this origin that failed
    /// verification; the origin re-checks its copy soon (ahead of its background scrub)
    /// and quarantines and restores it if it is corrupt. Fire-and-forget: answered by
    /// [`Response::SuspectNoted`] at once, before the check.
    SuspectBlob {
        /// The blob.
        digest: Digest,
    },
    /// Origin: re-verify one stored blob (`Some`), or every one (`None`), now and without
    /// the background scrub's rate limit, quarantining and restoring what is corrupt.
    /// Answered by [`Response::Scrubbed`] once done.
    Scrub {
        /// The blob, or `None` for the whole store.
        digest: Option<Digest>,
    },
    /// Agent or origin: where this node's DHT listens, so that the caller can join the DHT
    /// through it (bootstrap through membership). Answered by [`Response::DhtContact`].
    DhtContact,
    /// Agent or origin: the providers of `digest` this node's DHT finds now
    /// (`krakenctl blob peers --dht`). Answered by [`Response::DhtProviders`].
    DhtProviders {
        /// The blob.
        digest: Digest,
    },
    /// Origin: hold the bytes of a blob whose digest is not known yet (a registry
    /// client's chunked upload, sent on as its chunks arrive). The origin answers
    /// [`Response::Proceed`] and reads the body to its end, hashing it with sha256, or
    /// refuses at once; after the body, [`Response::Staged`] once the bytes are fsynced.
    /// Nothing is stored until [`Request::CommitStaged`] names the digest; uncommitted
    /// bytes are deleted after a while (and at restart).
    Stage {
        /// Routes the write-back, once committed.
        namespace: String,
    },
    /// Origin: store the bytes [`Request::Stage`] left under `token` as blob `digest`,
    /// as an ingest does (answered [`Response::Uploaded`]: verified, durable, pinned, its
    /// write-back queued, on this origin or, when it does not own `digest`, on the first
    /// live owner it sends them to). `NotFound` when the token is unknown (expired, or the
    /// origin restarted), `DigestMismatch` when the bytes hash to another digest (they are
    /// deleted).
    CommitStaged {
        /// Routes the write-back.
        namespace: String,
        /// From [`Response::Staged`].
        token: u64,
        /// The blob the bytes must hash to.
        digest: Digest,
    },
    /// Origin: the write-back queue's depth, how much of it is due now and when the
    /// rest is, and its oldest item. Answered by [`Response::WriteBackQueue`]; an origin
    /// from before it refuses the request as unknown (ask [`Request::WriteBackStatus`]).
    WriteBackQueue,
}

impl Request {
    /// The request's kind, for logs and spans (`"Upload"`, `"Metainfo"`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "Ping",
            Request::ClusterView => "ClusterView",
            Request::Announce { .. } => "Announce",
            Request::Metainfo { .. } => "Metainfo",
            Request::Peers { .. } => "Peers",
            Request::OriginMetainfo { .. } => "OriginMetainfo",
            Request::BlobStat { .. } => "BlobStat",
            Request::UploadStatus { .. } => "UploadStatus",
            Request::Upload { .. } => "Upload",
            Request::Download { .. } => "Download",
            Request::WriteBackStatus => "WriteBackStatus",
            Request::Pull { .. } => "Pull",
            Request::PullReport { .. } => "PullReport",
            Request::PutTag { .. } => "PutTag",
            Request::GetTag { .. } => "GetTag",
            Request::ListTags { .. } => "ListTags",
            Request::ListRepos { .. } => "ListRepos",
            Request::TagHistory { .. } => "TagHistory",
            Request::ReplicationStatus => "ReplicationStatus",
            Request::DeleteTag { .. } => "DeleteTag",
            Request::Ingest { .. } => "Ingest",
            Request::Warm { .. } => "Warm",
            Request::PutReferrer { .. } => "PutReferrer",
            Request::Referrers { .. } => "Referrers",
            Request::DeleteReferrer { .. } => "DeleteReferrer",
            Request::ListBlobs { .. } => "ListBlobs",
            Request::TouchBlobs { .. } => "TouchBlobs",
            Request::ListTagTable { .. } => "ListTagTable",
            Request::Gc { .. } => "Gc",
            Request::GcStatus { .. } => "GcStatus",
            Request::PurgeBlob { .. } => "PurgeBlob",
            Request::ForgetBlob { .. } => "ForgetBlob",
            Request::RecordTombstone { .. } => "RecordTombstone",
            Request::Tombstones { .. } => "Tombstones",
            Request::LinkBlobs { .. } => "LinkBlobs",
            Request::LinkManifest { .. } => "LinkManifest",
            Request::Linkers { .. } => "Linkers",
            Request::UnlinkBlob { .. } => "UnlinkBlob",
            Request::ReplicaSummary { .. } => "ReplicaSummary",
            Request::ReplicaDigests { .. } => "ReplicaDigests",
            Request::Repair { .. } => "Repair",
            Request::ReplicaStatus => "ReplicaStatus",
            Request::SuspectBlob { .. } => "SuspectBlob",
            Request::Scrub { .. } => "Scrub",
            Request::DhtContact => "DhtContact",
            Request::DhtProviders { .. } => "DhtProviders",
            Request::Stage { .. } => "Stage",
            Request::CommitStaged { .. } => "CommitStaged",
            Request::WriteBackQueue => "WriteBackQueue",
        }
    }

    /// The blob the request is about, if it names one.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Request::Announce { digest, .. }
            | Request::Metainfo { digest, .. }
            | Request::Peers { digest, .. }
            | Request::OriginMetainfo { digest, .. }
            | Request::BlobStat { digest, .. }
            | Request::UploadStatus { digest, .. }
            | Request::Upload { digest, .. }
            | Request::Download { digest, .. }
            | Request::Pull { digest, .. }
            | Request::PullReport { digest, .. }
            | Request::PutTag { digest, .. }
            | Request::Ingest { digest, .. }
            | Request::Warm { digest, .. }
            | Request::PurgeBlob { digest, .. }
            | Request::ForgetBlob { digest }
            | Request::RecordTombstone { digest, .. }
            | Request::LinkManifest { digest, .. }
            | Request::Linkers { digest, .. }
            | Request::UnlinkBlob { digest, .. }
            | Request::SuspectBlob { digest }
            | Request::DhtProviders { digest }
            | Request::CommitStaged { digest, .. }
            | Request::Scrub {
                digest: Some(digest),
            } => Some(digest),
            Request::Repair { digest, .. } => digest.as_ref(),
            _ => None,
        }
    }
}

/// An answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The request failed.
    Error(RemoteError),
    /// Answer to [`Request::Ping`].
    Pong(NodeInfo),
    /// An encoded `ClusterView`.
    View(Vec<u8>),
    /// Answer to [`Request::Announce`].
    Announced {
        /// Peers to try, best first.
        peers: Vec<PeerInfo>,
        /// When to announce again.
        interval_ms: u64,
    },
    /// An encoded `Metainfo`: how roles answer a metainfo request inside a node, and how
    /// nodes before [`Response::MetainfoFollows`] sent it (in the one frame, which capped
    /// it at 256 KiB, a blob of 64 GiB in 16 MiB pieces). [`crate::cluster::Cluster`] hands
    /// either form to callers as this one.
    Metainfo(Vec<u8>),
    /// An owner is still reading the blob through from its backend: ask again.
    Pending,
    /// Answer to [`Request::Peers`].
    Peers(Vec<PeerRecord>),
    /// Answer to [`Request::BlobStat`].
    BlobStat(BlobStat),
    /// Answer to [`Request::UploadStatus`] and to an [`Request::Upload`] whose body ended
    /// early: this many bytes are held.
    UploadOffset(u64),
    /// The upload (or ingest) is complete, verified, durable and queued for write-back.
    Uploaded {
        /// The blob's length.
        length: u64,
    },
    /// Answer to [`Request::Download`]: this many bytes follow.
    Content {
        /// Bytes that follow.
        len: u64,
        /// The blob's whole length.
        total: u64,
    },
    /// Answer to [`Request::WriteBackStatus`].
    WriteBack(WriteBackStatus),
    /// Answer to [`Request::Pull`] and [`Request::PullReport`].
    Pull(PullReport),
    /// Answer to [`Request::PutTag`].
    TagPut {
        /// False if the tag already pointed there.
        changed: bool,
    },
    /// Answer to [`Request::GetTag`].
    Tag {
        /// Target.
        digest: Digest,
        /// When it was set (ms since the epoch).
        updated_ms: u64,
    },
    /// Answer to [`Request::ListTags`] and [`Request::ListRepos`].
    Names {
        /// The page.
        names: Vec<String>,
        /// Pass as `after` for the next page; `None` on the last.
        next: Option<String>,
    },
    /// Answer to [`Request::TagHistory`]: (digest, ms since the epoch), oldest first.
    History(Vec<(Digest, u64)>),
    /// Answer to [`Request::ReplicationStatus`].
    Replication(Vec<DestinationStatus>),
    /// Answer to [`Request::DeleteTag`].
    TagDeleted,
    /// A metainfo answer on the wire: its `len` encoded bytes follow as the body, so a blob
    /// of any size the metainfo format allows can be described (up to
    /// [`MAX_METAINFO_LEN`]). Callers of [`crate::cluster::Cluster`] never see it: they get
    /// [`Response::Metainfo`].
    MetainfoFollows {
        /// Bytes of the body.
        len: u64,
    },
    /// The interim answer to [`Request::Ingest`]: the origin takes the blob; send the body.
    Proceed,
    /// Answer to [`Request::Warm`]: the owner holds the blob.
    Warmed(Warmed),
    /// Answer to [`Request::PutReferrer`]: stored durably on this node.
    ReferrerPut,
    /// Answer to [`Request::Referrers`]: descriptors (JSON objects), by referrer digest.
    Referrers(Vec<String>),
    /// Answer to [`Request::DeleteReferrer`].
    ReferrerDeleted,
    /// Answer to [`Request::ListBlobs`].
    Blobs {
        /// The page.
        blobs: Vec<BlobEntry>,
        /// Pass as `after` for the next page; `None` on the last.
        next: Option<Digest>,
    },
    /// Answer to [`Request::TouchBlobs`]: how many of them this origin holds.
    Touched {
        /// Blobs held (and touched).
        held: u64,
    },
    /// Answer to [`Request::ListTagTable`].
    TagTable {
        /// The page: `(repo, tag, digest)`.
        rows: Vec<(String, String, Digest)>,
        /// Pass as `after` for the next page; `None` on the last.
        next: Option<(String, String)>,
    },
    /// Answer to [`Request::Gc`] and [`Request::GcStatus`].
    Gc(GcReport),
    /// Answer to [`Request::PurgeBlob`].
    Purged(Purged),
    /// Answer to [`Request::ForgetBlob`].
    Forgotten,
    /// Answer to [`Request::RecordTombstone`]: stored durably on this node.
    TombstoneRecorded,
    /// Answer to [`Request::Tombstones`].
    Tombstones {
        /// (digest, deleted_ms), oldest first.
        entries: Vec<(Digest, u64)>,
        /// More follow: ask again from the last `deleted_ms`.
        more: bool,
    },
    /// Answer to [`Request::LinkBlobs`] and [`Request::LinkManifest`]: how many links
    /// were stored (on at least one owner each).
    Linked {
        /// Digests linked.
        count: u64,
    },
    /// Answer to [`Request::Linkers`]: the repositories linking the digest, sorted.
    Linkers(Vec<String>),
    /// Answer to [`Request::UnlinkBlob`].
    Unlinked {
        /// Some owner held the link.
        was_linked: bool,
        /// The repositories that still link the digest (union over the owners reached).
        remaining: Vec<String>,
    },
    /// Answer to [`Request::ReplicaSummary`]: one entry per bucket.
    ReplicaSummary(Vec<BucketSum>),
    /// Answer to [`Request::ReplicaDigests`].
    ReplicaDigests {
        /// The page.
        digests: Vec<Digest>,
        /// Pass as `after` for the next page; `None` on the last.
        next: Option<Digest>,
    },
    /// Answer to [`Request::Repair`].
    Repaired(RepairReport),
    /// Answer to [`Request::ReplicaStatus`].
    ReplicaStatus(ReplicaStatus),
    /// Answer to [`Request::SuspectBlob`]: the report was heard.
    SuspectNoted {
        /// A check was queued (false: the blob is not held here, was checked lately, is
        /// queued already, or the queue is full).
        queued: bool,
    },
    /// Answer to [`Request::Scrub`].
    Scrubbed(ScrubReport),
    /// Answer to [`Request::DhtContact`]: the node's DHT peer id and the address its DHT
    /// listens at (`None` when it runs no DHT).
    DhtContact {
        /// The libp2p peer id, as text.
        dht_peer: Option<String>,
        /// Where to dial it (the node's advertised host, the DHT listener's port).
        addr: Option<SocketAddr>,
    },
    /// Answer to [`Request::DhtProviders`].
    DhtProviders(Vec<DhtProvider>),
    /// Answer to [`Request::Stage`]: the bytes are fsynced and held under `token`.
    Staged {
        /// Names them to [`Request::CommitStaged`].
        token: u64,
        /// How many bytes came.
        length: u64,
        /// Their sha256 digest.
        digest: Digest,
    },
    /// Answer to [`Request::WriteBackQueue`].
    WriteBackQueue(WriteBackQueueStatus),
}

/// One provider a DHT lookup found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhtProvider {
    /// Its kraken peer id, QUIC address and kind, as its signed card says (`complete` is
    /// not known from the DHT: false).
    pub peer: PeerInfo,
    /// The DHT peer id that published the record.
    pub dht_peer: String,
}

/// What a scrub of an origin's store found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Blobs re-verified.
    pub checked: u64,
    /// Bytes read to do it.
    pub bytes: u64,
    /// Copies found corrupt (and quarantined).
    pub corrupt: u64,
    /// Corrupt copies replaced by a correct one (from another origin or the backend).
    pub restored: u64,
    /// Corrupt copies that could not be restored, and blobs that could not be read.
    pub failed: u64,
}

impl ScrubReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ScrubReport) {
        self.checked += other.checked;
        self.bytes += other.bytes;
        self.corrupt += other.corrupt;
        self.restored += other.restored;
        self.failed += other.failed;
    }
}

/// The largest metainfo a node sends or accepts: the largest the format allows (a header
/// and up to 96 bytes, a BLAKE3 hash and a sha512 chaining state, for each of at most
/// `MAX_PIECES` pieces: 24 MiB + 160 bytes).
pub const MAX_METAINFO_LEN: u64 = kraken_storage::metainfo::MAX_ENCODED_LEN as u64;

/// What an owner holds after a [`Request::Warm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmed {
    /// The blob's length.
    pub length: u64,
    /// This request read it through from the backend (false: the owner already held it).
    /// A caller that was answered [`Response::Pending`] before knows it was fetched.
    pub fetched: bool,
    /// What the blob references when it is a manifest or an index (nothing for a layer,
    /// a config or a document the cluster does not recognise as a manifest).
    pub references: Vec<WarmRef>,
}

/// One blob a warmed manifest or index references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRef {
    /// The blob.
    pub digest: Digest,
    /// Its role in the document.
    pub kind: RefKind,
    /// For an index's child: the platform the index names for it, if any.
    pub platform: Option<Platform>,
}

/// The role of a [`WarmRef`] in the document that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefKind {
    /// A child manifest of an index.
    Manifest,
    /// An image's config.
    Config,
    /// An image's layer.
    Layer,
    /// The manifest an OCI 1.1 `subject` field names.
    Subject,
}

/// The platform of an index entry (`os/architecture[/variant]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v7`, `v8`, … where the index names one.
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Pending replications to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    /// `backend`, `owner:<node>` or `remote:<name>`.
    pub destination: String,
    /// Items waiting.
    pub pending: u64,
    /// Seconds the oldest has waited.
    pub oldest_age_secs: u64,
    /// Failed attempts of the oldest.
    pub attempts: u32,
    /// Its last error.
    pub last_error: Option<String>,
}

/// Why a request failed, in a form a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

impl RemoteError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
        }
    }
}

/// Kinds of [`RemoteError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The blob (or tag) does not exist anywhere the node looked.
    NotFound,
    /// This node does not serve that request (wrong role, or not an owner).
    WrongNode,
    /// The request was malformed or inconsistent.
    BadRequest,
    /// The bytes do not hash to the digest; nothing was stored.
    DigestMismatch,
    /// An upload's offset is not where the origin's copy ends.
    OffsetMismatch,
    /// A dependency (backend, owners) is unavailable; retry later.
    Unavailable,
    /// The node failed.
    Internal,
    /// An upstream registry refused the cluster's credentials (its HTTP 401 or 403); the
    /// message is the upstream's. Added after `Internal`: nodes from before cannot decode it.
    Unauthorized,
    /// An upstream registry does not know the repository (its `NAME_UNKNOWN`); the message
    /// is the upstream's.
    NameUnknown,
    /// An upstream registry rate-limited the cluster (its HTTP 429); retry later. The
    /// message is the upstream's.
    TooManyRequests,
    /// The write is refused: the repository mirrors a read-only upstream registry.
    Denied,
}

/// What a node is (answer to [`Request::Ping`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Its roles, by name.
    pub roles: Vec<String>,
    /// Its software version.
    pub version: String,
}

/// A tracker's record of one peer of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer.
    pub peer: PeerInfo,
    /// Milliseconds since its last announce.
    pub last_announce_ms: u64,
}

/// What an origin holds of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStat {
    /// Complete in its store.
    pub present: bool,
    /// Length, if present.
    pub length: Option<u64>,
    /// Piece length, if present.
    pub piece_length: Option<u64>,
    /// The metainfo's id (hex BLAKE3), if present.
    pub metainfo_id: Option<String>,
    /// Written back to the backend.
    pub persisted: bool,
    /// Waiting in the write-back queue.
    pub queued: bool,
    /// Whether this origin owns the blob on the current ring.
    pub owner: bool,
    /// Seconds since this origin last read the blob through from its backend (since it
    /// started), if it did.
    pub read_through_secs_ago: Option<u64>,
}

/// An origin's write-back queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBackStatus {
    /// Items queued.
    pub depth: u64,
    /// The oldest: (namespace, digest, seconds queued, attempts, last error).
    pub oldest: Option<QueuedItem>,
}

/// An origin's write-back queue, with what is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBackQueueStatus {
    /// Items queued.
    pub depth: u64,
    /// Items due now: being written back or waiting for a worker. The others wait for a
    /// retry's backoff, or (a replica's copy) for the deferred first attempt that finds
    /// the first owner's upload already in the backend.
    pub due: u64,
    /// Seconds until the first item not yet due becomes due.
    pub next_due_in_secs: Option<u64>,
    /// The oldest item.
    pub oldest: Option<QueuedItem>,
}

/// One write-back item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedItem {
    /// Its namespace.
    pub namespace: String,
    /// The blob.
    pub digest: Digest,
    /// Seconds since it was queued.
    pub age_secs: u64,
    /// Failed attempts.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

/// Where the bytes of one pull came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReport {
    /// The blob.
    pub digest: Digest,
    /// Its length.
    pub length: u64,
    /// Wall time of the pull in milliseconds.
    pub elapsed_ms: u64,
    /// The blob was already local; nothing moved.
    pub already_present: bool,
    /// Verified bytes from agents.
    pub bytes_from_agents: u64,
    /// Verified bytes from origins.
    pub bytes_from_origins: u64,
    /// Requests that timed out and were retried elsewhere.
    pub pieces_retried: u64,
    /// Pieces that failed verification.
    pub bad_pieces: u64,
    /// Peers that sent bytes: (peer id hex, kind, bytes).
    pub sources: Vec<(String, String, u64)>,
    /// Peers that sent pieces failing verification: (peer id hex, kind, bad pieces). Each
    /// was blacklisted.
    pub bad_peers: Vec<(String, String, u32)>,
}

impl PullReport {
    /// A report from a download's swarm statistics.
    pub fn from_stats(
        digest: Digest,
        length: u64,
        elapsed: Duration,
        already_present: bool,
        stats: &SwarmStats,
    ) -> Self {
        let sources = stats
            .per_peer
            .iter()
            .filter(|(_, s)| s.downloaded > 0)
            .map(|(id, s)| (hex::encode(id.0), s.kind.name().to_string(), s.downloaded))
            .collect();
        let bad_peers = stats
            .per_peer
            .iter()
            .filter(|(_, s)| s.bad_pieces > 0)
            .map(|(id, s)| (hex::encode(id.0), s.kind.name().to_string(), s.bad_pieces))
            .collect();
        PullReport {
            digest,
            length,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            already_present,
            bytes_from_agents: stats.bytes_from_agents,
            bytes_from_origins: stats.bytes_from_origins,
            pieces_retried: stats.requests_timed_out,
            bad_pieces: stats.bad_pieces,
            sources,
            bad_peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_transport::wire::{decode_payload, encode_frame};
    use proptest::prelude::*;

    fn samples() -> Vec<Request> {
        let digest = Digest::sha256_of(b"x");
        vec![
            Request::Ping,
            Request::Upload {
                namespace: "library/ubuntu".into(),
                digest,
                offset: 7,
                length: 9,
                replica: true,
                persisted: false,
            },
            Request::Download {
                digest,
                offset: 1,
                len: 0,
            },
            Request::Pull {
                namespace: "ns".into(),
                digest,
            },
            Request::Ingest {
                namespace: "library/ubuntu".into(),
                digest,
                length: 9,
                replica: false,
                persisted: true,
            },
        ]
    }

    #[test]
    fn requests_name_their_kind_and_blob_for_spans() {
        let names: Vec<_> = samples().iter().map(Request::name).collect();
        assert_eq!(names, ["Ping", "Upload", "Download", "Pull", "Ingest"]);
        let digest = Digest::sha256_of(b"x");
        let digests: Vec<_> = samples().iter().map(|r| r.digest().copied()).collect();
        assert_eq!(
            digests,
            [None, Some(digest), Some(digest), Some(digest), Some(digest)]
        );
    }

    #[test]
    fn answers_and_requests_keep_their_wire_tags() {
        // Nodes from before send `Metainfo` as tag 4 and know nothing after `TagDeleted`
        // (18): new variants go last, and old tags never move.
        let tag = |r: &Response| postcard::to_allocvec(r).unwrap()[0];
        assert_eq!(tag(&Response::Metainfo(vec![1])), 4);
        assert_eq!(tag(&Response::TagDeleted), 18);
        assert_eq!(tag(&Response::MetainfoFollows { len: 1 }), 19);
        assert_eq!(tag(&Response::Proceed), 20);
        let warmed = Warmed {
            length: 1,
            fetched: false,
            references: Vec::new(),
        };
        assert_eq!(tag(&Response::Warmed(warmed)), 21);
        // Requests likewise: `Ingest` came after `DeleteTag` (19).
        let tag = |r: &Request| postcard::to_allocvec(r).unwrap()[0];
        assert_eq!(tag(&samples()[4]), 20);
        let warm = Request::Warm {
            namespace: "ns".into(),
            digest: Digest::sha256_of(b"x"),
            wait_ms: 1,
        };
        assert_eq!(tag(&warm), 21);
        // The staged upload's came after `DhtProviders` (45; its answer 43).
        let digest = Digest::sha256_of(b"x");
        assert_eq!(tag(&Request::DhtProviders { digest }), 45);
        let stage = Request::Stage {
            namespace: "ns".into(),
        };
        let commit = Request::CommitStaged {
            namespace: "ns".into(),
            token: 1,
            digest,
        };
        assert_eq!((tag(&stage), tag(&commit)), (46, 47));
        let tag = |r: &Response| postcard::to_allocvec(r).unwrap()[0];
        assert_eq!(tag(&Response::DhtProviders(Vec::new())), 43);
        let staged = Response::Staged {
            token: 1,
            length: 2,
            digest,
        };
        assert_eq!(tag(&staged), 44);
        // The write-back queue with its due count came after `Staged` (44; `CommitStaged` 47).
        let queue = Response::WriteBackQueue(WriteBackQueueStatus {
            depth: 0,
            due: 0,
            next_due_in_secs: None,
            oldest: None,
        });
        assert_eq!(tag(&queue), 45);
        let tag = |r: &Request| postcard::to_allocvec(r).unwrap()[0];
        assert_eq!(tag(&Request::WriteBackQueue), 48);
        // Error kinds likewise: the upstream ones came after `Internal` (6).
        let tag = |k: ErrorKind| postcard::to_allocvec(&k).unwrap()[0];
        assert_eq!(tag(ErrorKind::Internal), 6);
        assert_eq!(tag(ErrorKind::Unauthorized), 7);
        assert_eq!(tag(ErrorKind::NameUnknown), 8);
        assert_eq!(tag(ErrorKind::TooManyRequests), 9);
        assert_eq!(tag(ErrorKind::Denied), 10);
    }

    #[test]
    fn upstream_errors_round_trip_with_their_message() {
        for kind in [
            ErrorKind::Unauthorized,
            ErrorKind::NameUnknown,
            ErrorKind::TooManyRequests,
            ErrorKind::Denied,
        ] {
            let r = Response::Error(RemoteError::new(kind, "upstream said no"));
            let frame = encode_frame(&r).unwrap();
            let back: Response = decode_payload(&frame[4..]).unwrap();
            match back {
                Response::Error(e) => {
                    assert_eq!(e, RemoteError::new(kind, "upstream said no"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn replica_messages_round_trip_and_their_largest_answers_fit_a_frame() {
        let digest = Digest::of(kraken_storage::DigestAlgorithm::Sha512, b"x");
        for r in [
            Request::ReplicaSummary {
                with: "origin-1".into(),
            },
            Request::ReplicaDigests {
                with: "origin-1".into(),
                buckets: (0..=u8::MAX).collect(),
                after: Some(digest),
                limit: MAX_DIGEST_PAGE,
            },
            Request::Repair {
                digest: Some(digest),
                namespace: "library/ubuntu".into(),
            },
            Request::ReplicaStatus,
        ] {
            let frame = encode_frame(&r).unwrap();
            let back: Request = decode_payload(&frame[4..]).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
        let full = BucketSum {
            count: u32::MAX,
            hash: [0xff; 32],
        };
        encode_frame(&Response::ReplicaSummary(vec![full; SUMMARY_BUCKETS])).unwrap();
        let page = Response::ReplicaDigests {
            digests: vec![digest; MAX_DIGEST_PAGE as usize],
            next: Some(digest),
        };
        encode_frame(&page).unwrap();
        let report = RepairReport {
            short: vec![digest; MAX_REPORTED_DIGESTS],
            unreachable: vec!["origin-1".into(); 300],
            ..RepairReport::default()
        };
        encode_frame(&Response::Repaired(report)).unwrap();
    }

    #[test]
    fn requests_round_trip_through_frames() {
        for r in samples() {
            let frame = encode_frame(&r).unwrap();
            let back: Request = decode_payload(&frame[4..]).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }

    #[test]
    fn scrub_requests_and_their_report_round_trip() {
        let digest = Digest::sha256_of(b"x");
        for r in [
            Request::SuspectBlob { digest },
            Request::Scrub {
                digest: Some(digest),
            },
            Request::Scrub { digest: None },
        ] {
            let frame = encode_frame(&r).unwrap();
            let back: Request = decode_payload(&frame[4..]).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
        assert_eq!(Request::Scrub { digest: None }.digest(), None);
        assert_eq!(Request::SuspectBlob { digest }.name(), "SuspectBlob");
        let report = ScrubReport {
            checked: 3,
            bytes: 1 << 40,
            corrupt: 2,
            restored: 1,
            failed: 1,
        };
        let frame = encode_frame(&Response::Scrubbed(report)).unwrap();
        match decode_payload::<Response>(&frame[4..]).unwrap() {
            Response::Scrubbed(back) => assert_eq!(back, report),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Untrusted bytes never panic the decoders, whatever they hold.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload::<Request>(&bytes);
            let _ = decode_payload::<Response>(&bytes);
        }

        /// Mutated valid frames decode to something or fail cleanly.
        #[test]
        fn mutated_requests_never_panic(i in 0usize..5, at in any::<usize>(), b in any::<u8>()) {
            let frame = encode_frame(&samples()[i]).unwrap();
            let mut payload = frame[4..].to_vec();
            let n = payload.len();
            payload[at % n] = b;
            let _ = decode_payload::<Request>(&payload);
        }
    }
}
