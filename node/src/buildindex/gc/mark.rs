//! Mark: every digest reachable from a root, through the manifest graph (an image's config
//! and layers, an index's children, a manifest's `subject`), and every referrer of a marked
//! manifest (a manifest whose `subject` is marked), to a fixpoint.
//!
//! Pure but for the [`ManifestSource`] it reads manifests from, so the walk is unit-tested
//! against a map; the driver reads from the origins.

use std::collections::{BTreeMap, BTreeSet};

use kraken_registry_gateway::media;
use kraken_storage::Digest;
use serde::Deserialize;

use crate::proto::RemoteError;

/// Where marking reads manifests.
pub trait ManifestSource {
    /// The bytes of `digest` if it is small enough to be a manifest; `None` if nobody
    /// holds it (or it is too large to be one). An error means the walk cannot be trusted.
    fn manifest(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, RemoteError>> + Send;
}

/// What one manifest references.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edges {
    /// Config and layers: leaves.
    pub blobs: Vec<Digest>,
    /// Index children (and, depending on the parser, the subject): walked further.
    pub manifests: Vec<Digest>,
    /// The `subject`, if any: walked further, and what makes this a referrer.
    pub subject: Option<Digest>,
}

#[derive(Deserialize)]
struct WithSubject {
    subject: Option<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// What `bytes` references, if it is a manifest or an index; `None` for any other blob.
pub fn edges(bytes: &[u8]) -> Option<Edges> {
    let refs = media::references(bytes).ok().flatten()?;
    // Read apart from the parser so a referrer is found whatever it reports the subject as.
    let subject = serde_json::from_slice::<WithSubject>(bytes)
        .ok()
        .and_then(|w| w.subject)
        .and_then(|d| d.digest.parse().ok());
    Some(Edges {
        blobs: refs.blobs,
        manifests: refs.manifests,
        subject,
    })
}

/// Marks `root` (a manifest) and everything it reaches into `marked`; digests already
/// marked are not walked again. `namespace` routes read-throughs.
pub async fn mark_from(
    source: &impl ManifestSource,
    namespace: &str,
    root: Digest,
    marked: &mut BTreeSet<Digest>,
) -> Result<(), RemoteError> {
    // (digest, may be a manifest)
    let mut todo = vec![(root, true)];
    while let Some((digest, manifest)) = todo.pop() {
        if !marked.insert(digest) || !manifest {
            continue;
        }
        let Some(bytes) = source.manifest(namespace, &digest).await? else {
            continue;
        };
        if let Some(e) = edges(&bytes) {
            todo.extend(e.blobs.into_iter().map(|b| (b, false)));
            todo.extend(e.manifests.into_iter().map(|m| (m, true)));
            todo.extend(e.subject.map(|s| (s, true)));
        }
    }
    Ok(())
}

/// Referrers not marked yet whose subject is marked: the next ones to mark. `subjects`
/// maps each candidate manifest (an unmarked small blob of the inventory) to its subject.
pub fn referrers_due(
    subjects: &BTreeMap<Digest, Digest>,
    marked: &BTreeSet<Digest>,
) -> Vec<Digest> {
    subjects
        .iter()
        .filter(|(referrer, subject)| !marked.contains(*referrer) && marked.contains(*subject))
        .map(|(referrer, _)| *referrer)
        .collect()
}

/// Marks every referrer (transitively: a referrer of a referrer too) of a marked manifest.
pub async fn mark_referrers(
    source: &impl ManifestSource,
    namespace: &str,
    subjects: &BTreeMap<Digest, Digest>,
    marked: &mut BTreeSet<Digest>,
) -> Result<(), RemoteError> {
    loop {
        let due = referrers_due(subjects, marked);
        if due.is_empty() {
            return Ok(());
        }
        for referrer in due {
            mark_from(source, namespace, referrer, marked).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Manifests in memory.
    #[derive(Default)]
    struct Map(HashMap<Digest, Vec<u8>>);

    impl ManifestSource for Map {
        async fn manifest(&self, _: &str, d: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
            Ok(self.0.get(d).cloned())
        }
    }

    fn blob(name: &str) -> Digest {
        Digest::sha256_of(name.as_bytes())
    }

    fn desc(d: &Digest, media_type: &str) -> String {
        format!(r#"{{"mediaType":"{media_type}","digest":"{d}","size":1}}"#)
    }

    impl Map {
        fn image(
            &mut self,
            config: &Digest,
            layers: &[Digest],
            subject: Option<&Digest>,
        ) -> Digest {
            let layers: Vec<_> = layers
                .iter()
                .map(|l| desc(l, "application/vnd.oci.image.layer.v1.tar"))
                .collect();
            let subject = subject.map_or(String::new(), |s| {
                format!(r#","subject":{}"#, desc(s, media::OCI_MANIFEST))
            });
            let json = format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]{subject}}}"#,
                media::OCI_MANIFEST,
                desc(config, "application/vnd.oci.image.config.v1+json"),
                layers.join(",")
            );
            self.put(json)
        }

        fn index(&mut self, children: &[Digest]) -> Digest {
            let children: Vec<_> = children
                .iter()
                .map(|c| desc(c, media::OCI_MANIFEST))
                .collect();
            let json = format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
                media::OCI_INDEX,
                children.join(",")
            );
            self.put(json)
        }

        fn put(&mut self, json: String) -> Digest {
            let d = Digest::sha256_of(json.as_bytes());
            self.0.insert(d, json.into_bytes());
            d
        }
    }

    #[tokio::test]
    async fn an_index_marks_its_children_their_blobs_and_a_subject() {
        let mut m = Map::default();
        let (c1, l1, l2) = (blob("c1"), blob("l1"), blob("shared"));
        let a = m.image(&c1, &[l1, l2], None);
        let b = m.image(&blob("c2"), &[l2, blob("l3")], None);
        let idx = m.index(&[a, b]);
        let sig = m.image(&blob("sigcfg"), &[blob("sig")], Some(&a));
        let lone = m.image(&blob("c9"), &[blob("l9")], None);

        let mut marked = BTreeSet::new();
        mark_from(&m, "r", idx, &mut marked).await.unwrap();
        for d in [idx, a, b, c1, l1, l2, blob("c2"), blob("l3")] {
            assert!(marked.contains(&d), "{d} marked");
        }
        assert_eq!(marked.len(), 8);
        assert!(!marked.contains(&sig) && !marked.contains(&lone));

        // A tagged referrer keeps its subject (and what the subject reaches).
        let mut from_sig = BTreeSet::new();
        mark_from(&m, "r", sig, &mut from_sig).await.unwrap();
        assert!(from_sig.contains(&a) && from_sig.contains(&l1));
    }

    #[tokio::test]
    async fn referrers_of_marked_manifests_are_marked_to_a_fixpoint() {
        let mut m = Map::default();
        let a = m.image(&blob("c1"), &[blob("l1")], None);
        let sig = m.image(&blob("sigcfg"), &[blob("sig")], Some(&a));
        // A referrer of the referrer (an attestation of the signature).
        let att = m.image(&blob("attcfg"), &[blob("att")], Some(&sig));
        // A referrer of something nobody keeps.
        let dead = m.image(&blob("deadcfg"), &[], None);
        let orphan = m.image(&blob("orphcfg"), &[blob("orph")], Some(&dead));

        let subjects: BTreeMap<_, _> = [sig, att, orphan]
            .into_iter()
            .map(|d| (d, edges(&m.0[&d]).unwrap().subject.unwrap()))
            .collect();
        let mut marked = BTreeSet::new();
        mark_from(&m, "r", a, &mut marked).await.unwrap();
        mark_referrers(&m, "r", &subjects, &mut marked)
            .await
            .unwrap();
        for d in [sig, att, blob("sig"), blob("att"), blob("attcfg")] {
            assert!(marked.contains(&d), "{d} marked");
        }
        assert!(!marked.contains(&orphan) && !marked.contains(&dead));
        assert!(!marked.contains(&blob("orph")));
    }

    #[test]
    fn a_layer_is_no_manifest() {
        assert_eq!(edges(b"\x1f\x8b not json"), None);
        assert_eq!(edges(br#"{"a":1}"#), None);
    }
}
