//! The I/O of anti-entropy: a pass ([`Origin::anti_entropy_pass`]), the check of one
//! digest (`krakenctl repair --digest`), and the answers to co-owners' summary and
//! listing requests. The decisions are [`super::ledger`]'s and [`super::summary`]'s.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use kraken_membership::{ClusterView, Member, NodeId, Ring, Role};
use kraken_storage::Digest;
use kraken_storage::cas::BlobState;

use super::ledger::{Ledger, LocalBlob};
use super::{RingSignature, summary};
use crate::client::CallError;
use crate::origin::{Origin, internal};
use crate::proto::{
    BucketSum, DEFAULT_NAMESPACE, ErrorKind, MAX_DIGEST_PAGE, RemoteError, RepairReport,
    ReplicaStatus, Request, Response,
};

/// What a co-owner answered: its summary, and its digests in the buckets to list.
struct PeerAnswer {
    summary: Vec<BucketSum>,
    buckets: Vec<u8>,
    listed: BTreeSet<Digest>,
}

impl Origin {
    /// The ledger of the complete local blobs on `view`'s origin ring: a store scan,
    /// and an owner computation per blob unless the last ledger was built from the same
    /// ring and the same listing (co-owners asking one after another, or each page of a
    /// listing, then cost only the scan). Both off the async threads.
    async fn ledger(&self, view: &ClusterView) -> Result<Arc<Ledger>, RemoteError> {
        let signature = RingSignature::of(view);
        let ring = view.ring(Role::Origin);
        let origin = self.clone();
        tokio::task::spawn_blocking(move || {
            let inner = &origin.inner;
            let mut listing = blake3::Hasher::new();
            let blobs: Vec<LocalBlob> = inner
                .cas
                .list()
                .map_err(internal)?
                .into_iter()
                .filter(|b| b.state == BlobState::Complete)
                .map(|b| {
                    listing.update(b.digest.hash_bytes());
                    listing.update(&[u8::from(b.persisted)]);
                    LocalBlob {
                        digest: b.digest,
                        persisted: b.persisted,
                    }
                })
                .collect();
            let key = (signature, *listing.finalize().as_bytes());
            let mut cached = inner
                .antientropy
                .ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((k, ledger)) = &*cached
                && *k == key
            {
                return Ok(ledger.clone());
            }
            let ledger = Arc::new(Ledger::new(&inner.me, &ring, inner.config.replicas, blobs));
            *cached = Some((key, ledger.clone()));
            Ok(ledger)
        })
        .await
        .map_err(internal)?
    }

    fn ring(&self) -> Ring {
        self.inner.cluster.view().ring(Role::Origin)
    }

    fn view(&self) -> ClusterView {
        self.inner.cluster.view()
    }

    /// Answers `Request::ReplicaSummary`.
    pub(in crate::origin) async fn replica_summary(&self, with: &str) -> Response {
        let peer = match peer_id(with) {
            Ok(p) => p,
            Err(e) => return Response::Error(e),
        };
        match self.ledger(&self.view()).await {
            Ok(ledger) => Response::ReplicaSummary(ledger.summary(&peer)),
            Err(e) => Response::Error(e),
        }
    }

    /// Answers `Request::ReplicaDigests`.
    pub(in crate::origin) async fn replica_digests(
        &self,
        with: &str,
        buckets: &[u8],
        after: Option<&Digest>,
        limit: u32,
    ) -> Response {
        let peer = match peer_id(with) {
            Ok(p) => p,
            Err(e) => return Response::Error(e),
        };
        let limit = limit.clamp(1, MAX_DIGEST_PAGE) as usize;
        match self.ledger(&self.view()).await {
            Ok(ledger) => {
                let (digests, next) = ledger.shared_page(&peer, buckets, after, limit);
                Response::ReplicaDigests { digests, next }
            }
            Err(e) => Response::Error(e),
        }
    }

    /// Answers `Request::ReplicaStatus`.
    pub(in crate::origin) fn replica_status(&self) -> Response {
        Response::ReplicaStatus(self.inner.antientropy.status())
    }

    /// Asks `peer` for its summary and lists the buckets that differ from ours.
    async fn ask(&self, peer: &Member, ledger: &Ledger) -> Result<PeerAnswer, String> {
        let me = self.inner.me.as_str().to_string();
        let cluster = &self.inner.cluster;
        let request = Request::ReplicaSummary { with: me.clone() };
        let theirs = match cluster.call(peer.quic_addr, &request).await {
            Ok(Response::ReplicaSummary(s)) => s,
            Ok(other) => return Err(CallError::unexpected(peer.quic_addr, other).to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let ours = ledger.summary(&peer.id);
        let actions = summary::compare(&ours, &theirs).map_err(|e| e.to_string())?;
        let buckets: Vec<u8> = (0..=u8::MAX)
            .filter(|b| actions[usize::from(*b)] == summary::BucketAction::List)
            .collect();
        let mut listed = BTreeSet::new();
        let mut after = None;
        while !buckets.is_empty() {
            let request = Request::ReplicaDigests {
                with: me.clone(),
                buckets: buckets.clone(),
                after,
                limit: MAX_DIGEST_PAGE,
            };
            match cluster.call(peer.quic_addr, &request).await {
                Ok(Response::ReplicaDigests { digests, next }) => {
                    // A page that does not move the cursor forward would loop for ever.
                    if next.is_some() && next <= after {
                        return Err("a listing page did not advance".into());
                    }
                    listed.extend(digests);
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                Ok(other) => {
                    return Err(CallError::unexpected(peer.quic_addr, other).to_string());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(PeerAnswer {
            summary: theirs,
            buckets,
            listed,
        })
    }

    /// One anti-entropy pass (see the module docs of [`super`]). `fresh` offers again the
    /// blobs not owned here that every owner held at an earlier pass on the same ring
    /// (`krakenctl repair` does).
    pub async fn anti_entropy_pass(&self, fresh: bool) -> RepairReport {
        let state = &self.inner.antientropy;
        let _one_at_a_time = state.pass_lock.lock().await;
        let view = self.inner.cluster.view();
        let signature = RingSignature::of(&view);
        let ring = view.ring(Role::Origin);
        let members: HashMap<NodeId, Member> = ring
            .members()
            .iter()
            .map(|m| (m.id.clone(), m.clone()))
            .collect();
        let mut report = RepairReport::default();
        let mut ledger = match self.ledger(&view).await {
            // A copy: the pass marks what peers hold in its own.
            Ok(l) => Ledger::clone(&l),
            Err(e) => {
                tracing::error!(error = %e, "anti-entropy: cannot list the store");
                report.failed = 1;
                state.metrics.failures.inc();
                return report;
            }
        };
        let concurrency = self.inner.config.repair_concurrency;

        // Compare with every co-owner.
        let peers: Vec<Member> = ledger
            .co_owners()
            .iter()
            .filter_map(|id| members.get(id).cloned())
            .collect();
        let ledger_ref = &ledger;
        let answers: Vec<(Member, Result<PeerAnswer, String>)> = futures::stream::iter(peers)
            .map(|peer| async move {
                let answer = self.ask(&peer, ledger_ref).await;
                (peer, answer)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut jobs: Vec<(Member, Digest)> = Vec::new();
        for (peer, answer) in answers {
            let compared = answer.and_then(|a| {
                let (mut send, _) = ledger
                    .compare(&peer.id, &a.summary)
                    .map_err(|e| e.to_string())?;
                send.extend(ledger.reconcile(&peer.id, &a.buckets, &a.listed));
                Ok(send)
            });
            match compared {
                Ok(send) => jobs.extend(send.into_iter().map(|d| (peer.clone(), d))),
                Err(e) => {
                    tracing::warn!(peer = %peer.id, error = %e, "anti-entropy: cannot compare");
                    state.metrics.failures.inc();
                    report.unreachable.push(peer.id.as_str().to_string());
                }
            }
        }

        // Offer what is held here but owned elsewhere.
        let handed_off = {
            let mut h = state
                .handed_off
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if h.0 != signature || fresh {
                *h = (signature.clone(), Default::default());
            }
            h.1.clone()
        };
        let mut offered = Vec::new();
        for (digest, owners) in ledger.offers() {
            if handed_off.contains(&digest) {
                ledger.confirm_all(&digest);
                continue;
            }
            offered.push(digest);
            jobs.extend(
                owners
                    .iter()
                    .filter_map(|id| members.get(id))
                    .map(|m| (m.clone(), digest)),
            );
        }
        report.under_replicated = ledger.tally().short;

        // Copy.
        let namespaces: HashMap<Digest, String> = self
            .inner
            .queue
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.digest, i.namespace))
            .collect();
        let copies: Vec<(Member, Digest, Result<u64, String>)> = futures::stream::iter(jobs)
            .map(|(owner, digest)| {
                let namespace = namespaces
                    .get(&digest)
                    .map_or(DEFAULT_NAMESPACE, String::as_str);
                let persisted = ledger.blob(&digest).is_some_and(|b| b.persisted);
                async move {
                    let pushed = self.push(&owner, namespace, &digest, persisted).await;
                    (owner, digest, pushed.map_err(|e| e.to_string()))
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (owner, digest, pushed) in copies {
            match pushed {
                Ok(sent) => {
                    ledger.confirm(&owner.id, &digest);
                    if sent > 0 {
                        report.copied += 1;
                        report.copied_bytes += sent;
                    }
                }
                Err(e) => {
                    tracing::warn!(%digest, owner = %owner.id, error = %e, "anti-entropy copy failed");
                    report.failed += 1;
                }
            }
        }

        let tally = ledger.tally();
        report.blobs = tally.blobs;
        report.remaining = tally.short;
        report.short = tally.digests;
        let fully_held: Vec<Digest> = offered
            .into_iter()
            .filter(|d| ledger.held_by_all(d))
            .collect();
        self.record_pass(&signature, fully_held, &report);
        report
    }

    fn record_pass(&self, signature: &RingSignature, handed: Vec<Digest>, report: &RepairReport) {
        let state = &self.inner.antientropy;
        {
            let mut h = state
                .handed_off
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if h.0 == *signature {
                h.1.extend(handed);
            }
        }
        state.metrics.passes.inc();
        state.metrics.copies.inc_by(report.copied);
        state.metrics.failures.inc_by(report.failed);
        state
            .metrics
            .under_replicated
            .set(i64::try_from(report.remaining).unwrap_or(i64::MAX));
        *state.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((
            Instant::now(),
            ReplicaStatus {
                passes: 0,
                last_pass_secs_ago: None,
                blobs: report.blobs,
                under_replicated: report.remaining,
                failed: report.failed,
            },
        ));
    }

    /// Answers `Request::Repair`: a pass now, or the check of one digest.
    pub(in crate::origin) async fn repair(
        &self,
        digest: Option<&Digest>,
        namespace: &str,
    ) -> Response {
        match digest {
            None => Response::Repaired(self.anti_entropy_pass(true).await),
            Some(d) => match self.repair_digest(d, namespace).await {
                Ok(report) => Response::Repaired(report),
                Err(e) => Response::Error(e),
            },
        }
    }

    /// Brings `digest` to each of its owners: pushed from here if this origin holds it;
    /// read through from the backend if no origin holds it and this is the first owner
    /// that answers.
    async fn repair_digest(
        &self,
        digest: &Digest,
        namespace: &str,
    ) -> Result<RepairReport, RemoteError> {
        let owners = self.owners(digest);
        let others: Vec<Member> = self
            .ring()
            .members()
            .iter()
            .filter(|m| m.id != self.inner.me)
            .cloned()
            .collect();
        // Who holds it: `None` for an origin that did not answer.
        let request = Request::BlobStat { digest: *digest };
        let asked = others
            .iter()
            .map(|m| self.inner.cluster.call(m.quic_addr, &request));
        let held: HashMap<NodeId, Option<bool>> = others
            .iter()
            .zip(futures::future::join_all(asked).await)
            .map(|(m, answer)| {
                let present = match answer {
                    Ok(Response::BlobStat(s)) => Some(s.present),
                    _ => None,
                };
                (m.id.clone(), present)
            })
            .collect();
        let mut report = RepairReport::default();
        let here = self.inner.cas.contains(digest).map_err(internal)?;
        if !here {
            let anywhere = held.values().any(|h| *h == Some(true));
            let first_answering_owner = owners
                .iter()
                .find(|m| m.id == self.inner.me || held.get(&m.id).is_some_and(Option::is_some));
            if anywhere || first_answering_owner.is_none_or(|m| m.id != self.inner.me) {
                return Ok(report);
            }
            report.under_replicated = 1;
            if let Err(e) = self.read_through_all(namespace, digest).await {
                if e.kind == ErrorKind::NotFound {
                    return Err(RemoteError::new(
                        ErrorKind::NotFound,
                        format!("no origin holds {digest} and the backend does not have it"),
                    ));
                }
                report.failed = 1;
                report.remaining = 1;
                report.short.push(*digest);
                self.inner.antientropy.metrics.failures.inc();
                return Ok(report);
            }
            report.fetched = 1;
        }
        report.blobs = 1;
        let lacking: Vec<&Member> = owners
            .iter()
            .filter(|m| m.id != self.inner.me && held.get(&m.id) != Some(&Some(true)))
            .collect();
        if here && !lacking.is_empty() {
            report.under_replicated = 1;
        }
        let persisted = self
            .inner
            .cas
            .info(digest)
            .map_err(internal)?
            .is_some_and(|i| i.persisted);
        let namespace = self
            .queued_namespace(digest)
            .unwrap_or_else(|| namespace.to_string());
        let pushes = lacking
            .iter()
            .map(|owner| self.push(owner, &namespace, digest, persisted));
        for (owner, pushed) in lacking.iter().zip(futures::future::join_all(pushes).await) {
            match pushed {
                Ok(sent) if sent > 0 => {
                    report.copied += 1;
                    report.copied_bytes += sent;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%digest, owner = %owner.id, error = %e, "repair copy failed");
                    report.failed += 1;
                }
            }
        }
        let metrics = &self.inner.antientropy.metrics;
        metrics.copies.inc_by(report.copied);
        metrics.failures.inc_by(report.failed);
        if report.failed > 0 {
            report.remaining = 1;
            report.short.push(*digest);
        }
        Ok(report)
    }

    /// Reads `digest` through from the backend and waits for the outcome.
    async fn read_through_all(&self, namespace: &str, digest: &Digest) -> Result<(), RemoteError> {
        let mut rx = self.read_through(namespace, digest);
        let outcome = rx.wait_for(Option::is_some).await.map_err(|_| {
            RemoteError::new(ErrorKind::Internal, "read-through ended without a result")
        })?;
        match &*outcome {
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(())) | None => Ok(()),
        }
    }
}

fn peer_id(with: &str) -> Result<NodeId, RemoteError> {
    NodeId::new(with)
        .map_err(|e| RemoteError::new(ErrorKind::BadRequest, format!("bad node id: {e}")))
}
