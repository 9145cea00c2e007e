//! The gateway's referrers calls over the cluster: the build-index referrers table (see
//! [`crate::buildindex::referrers`]) as `Registry::put_referrer`, `referrers` and
//! `delete_referrer` need it.
//!
//! A put goes to the first live owner of `(repo, subject)`, which copies it to the others;
//! a listing asks every live build-index node and merges the answers by referrer digest,
//! so a referrer stored on any one node is listed however the ring changed since; a delete
//! goes to every live build-index node, so no copy is left to reappear.

use std::collections::BTreeMap;
use std::time::Duration;

use kraken_membership::Role;
use kraken_registry_gateway::registry::RegistryError;
use kraken_storage::Digest;

use crate::buildindex::referrers::owners_of_referrers;
use crate::client::{CallError, Cluster};
use crate::proto::{ErrorKind, Request, Response};

fn call_error(e: &CallError) -> RegistryError {
    match e.remote() {
        Some(r) if let Some(refused) = crate::registry::upstream_refusal(r) => refused,
        Some(r) if r.kind == ErrorKind::BadRequest => RegistryError::Internal(r.message.clone()),
        _ => RegistryError::Unavailable(e.to_string()),
    }
}

/// Lists `referrer` under `subject` in `repo`, durably on at least one owner.
pub(crate) async fn put(
    cluster: &Cluster,
    repo: &str,
    subject: &Digest,
    referrer: &Digest,
    descriptor: &str,
) -> Result<(), RegistryError> {
    let owners = owners_of_referrers(cluster, repo, subject, 0);
    let request = Request::PutReferrer {
        repo: repo.into(),
        subject: *subject,
        digest: *referrer,
        descriptor: descriptor.into(),
        replica: false,
    };
    match cluster
        .call_first(&owners, Role::BuildIndex, &request, Duration::from_secs(60))
        .await
    {
        Ok(Response::ReferrerPut) => Ok(()),
        Ok(other) => Err(RegistryError::Internal(format!("{other:?}"))),
        Err(CallError::NoOwners(_)) => Err(RegistryError::Unavailable(
            "no live build-index node".into(),
        )),
        Err(e) => Err(call_error(&e)),
    }
}

/// The referrers of `subject` in `repo`: the union over every live build-index node.
pub(crate) async fn list(
    cluster: &Cluster,
    repo: &str,
    subject: &Digest,
) -> Result<Vec<String>, RegistryError> {
    let nodes = cluster.live_addrs(Role::BuildIndex);
    if nodes.is_empty() {
        return Err(RegistryError::Unavailable(
            "no live build-index node".into(),
        ));
    }
    let request = Request::Referrers {
        repo: repo.into(),
        subject: *subject,
    };
    let answers = futures::future::join_all(nodes.iter().map(|a| cluster.call(*a, &request))).await;
    let mut merged = BTreeMap::new();
    let mut reached = false;
    let mut last_error = None;
    for answer in answers {
        match answer {
            Ok(Response::Referrers(list)) => {
                reached = true;
                for descriptor in list {
                    let digest = serde_json::from_str::<serde_json::Value>(&descriptor)
                        .ok()
                        .and_then(|v| v.get("digest")?.as_str().map(str::to_string));
                    if let Some(d) = digest {
                        merged.insert(d, descriptor);
                    }
                }
            }
            Ok(other) => last_error = Some(RegistryError::Internal(format!("{other:?}"))),
            Err(e) => last_error = Some(call_error(&e)),
        }
    }
    if !reached {
        return Err(last_error.unwrap_or_else(|| RegistryError::Unavailable("no answer".into())));
    }
    Ok(merged.into_values().collect())
}

/// Forgets `referrer` under `subject` in `repo` on every live build-index node; `Ok` when
/// at least one answered (the others are down, and no longer read).
pub(crate) async fn delete(
    cluster: &Cluster,
    repo: &str,
    subject: &Digest,
    referrer: &Digest,
) -> Result<(), RegistryError> {
    let nodes = cluster.live_addrs(Role::BuildIndex);
    let request = Request::DeleteReferrer {
        repo: repo.into(),
        subject: *subject,
        digest: *referrer,
    };
    let answers = futures::future::join_all(nodes.iter().map(|a| cluster.call(*a, &request))).await;
    let mut last_error = RegistryError::Unavailable("no live build-index node".into());
    let mut done = false;
    for answer in answers {
        match answer {
            Ok(Response::ReferrerDeleted) => done = true,
            Ok(other) => last_error = RegistryError::Internal(format!("{other:?}")),
            Err(e) => last_error = call_error(&e),
        }
    }
    if done { Ok(()) } else { Err(last_error) }
}
